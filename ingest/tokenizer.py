"""A byte-level BPE tokenizer (Hugging Face ``tokenizers``) trained on a text version's train split.

Byte-level (GPT-2's scheme: every byte is in the base alphabet, so any text encodes and decodes
back exactly), no normaliser (the ingest already normalised), no prefix space. Training is
deterministic for a given version: documents are fed in the order the version stores them, and
the trainer breaks ties between equally frequent pairs by the pair itself; the same version gives
the same ``tokenizer.json`` bytes with 1 or many threads and in a fresh process
(``tests/ingest/test_text_tokens.py`` checks it). Its id is the sha256 of those bytes.

Or a tokenizer file the user gives: loaded, checked to hold the end-of-document token, and
stored beside the version in the same way. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ingest.errors import ContractError
from ingest.text_contract import TokenizerSpec

BATCH_DOCS = 1000


def train_bpe(texts: Iterable[str], spec: TokenizerSpec, length: int | None = None):  # -> tokenizers.Tokenizer
    """A byte-level BPE of ``spec.vocab_size`` tokens (special tokens first) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                  special_tokens=list(spec.special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer


def load_tokenizer_file(path: str | Path, spec: TokenizerSpec):  # -> tokenizers.Tokenizer
    """A user's ``tokenizer.json``; ContractError when it cannot be read or lacks the eos token."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ContractError(f"tokenizer file {path}: cannot load it: {str(exc).splitlines()[0]}") from None
    if tokenizer.token_to_id(spec.eos) is None:
        raise ContractError(f"tokenizer file {path}: has no {spec.eos!r} token (the contract's tokenizer.eos)")
    return tokenizer


def tokenizer_id(serialised: str) -> str:
    """``tok-`` + the first 12 hex digits of the tokenizer.json's sha256."""
    return "tok-" + hashlib.sha256(serialised.encode()).hexdigest()[:12]
