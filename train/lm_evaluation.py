"""Evaluate a registered language model: perplexity on a dataset's validation tokens, and samples.

Both run on the version's exported Hugging Face folder with ``transformers`` (not on rayline's
own ``GPT``), so an evaluation also proves the artifact others load is the model that trained.

- **Perplexity** over the validation token split of the tokenizer the model was trained with
  (its ``tokenizer`` version tag): the split's token stream cut into consecutive windows of
  ``seq_len + 1`` tokens that overlap by one, so every token after the first is predicted
  exactly once with up to ``seq_len`` tokens of context; the tail shorter than a window is left
  out. ``eval_loss`` is the mean next-token cross-entropy, ``eval_perplexity = exp(eval_loss)``.
- **Completions**: the first ``PROMPT_TOKENS`` tokens of the first ``PROMPTS`` validation
  documents, decoded to text, encoded again by the exported tokenizer and continued by
  ``generate`` (top-k sampling, seed ``SEED + i`` for prompt ``i``: the same model gives the
  same text), logged as ``completions.json`` and returned in the job's summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from train.tasks import LanguageModeling

PROMPTS = 3
PROMPT_TOKENS = 16  # at most; also at most half the context
NEW_TOKENS = 32  # at most; prompt + completion stay within the context
TOP_K = 20
SEED = 0
BATCH = 16
COMPLETIONS_FILE = "completions.json"


def windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """``[n, seq_len + 1]`` int64 windows of ``tokens`` overlapping by one token (see the module doc)."""
    count = max((len(tokens) - 1) // seq_len, 0)
    index = np.arange(count)[:, None] * seq_len + np.arange(seq_len + 1)
    return np.asarray(tokens)[index].astype(np.int64)


@torch.no_grad()
def perplexity(logits_of: Callable[[torch.Tensor], torch.Tensor], rows: np.ndarray,
               batch: int = BATCH) -> dict[str, float]:
    """Mean next-token loss and perplexity of ``logits_of`` over ``rows`` (from :func:`windows`), summed and
    turned into figures by the training task's own ``sums``/``metrics`` (the same loss, the same perplexity)."""
    task = LanguageModeling()
    sums = dict.fromkeys(task.sum_keys, 0.0)
    for lo in range(0, len(rows), batch):
        chunk = torch.from_numpy(rows[lo:lo + batch])
        for key, value in task.sums(logits_of, chunk[:, :-1], chunk[:, 1:]).items():
            sums[key] += value
    figures = task.metrics(sums)
    return {"eval_loss": figures["val_loss"], "eval_perplexity": figures["val_perplexity"], "eval_tokens": sums["n"]}


@torch.no_grad()
def completions(model: Any, tokenizer: Any, documents: list[np.ndarray], seq_len: int) -> list[dict[str, Any]]:
    """Sampled continuations of prompts cut from ``documents`` (token arrays), reproducible by seed."""
    prompt_tokens = max(1, min(PROMPT_TOKENS, seq_len // 2))
    out = []
    for i, doc in enumerate(documents[:PROMPTS]):
        prompt = tokenizer.decode(doc[:prompt_tokens].tolist())
        encoded = tokenizer(prompt, return_tensors="pt")
        ids = encoded["input_ids"][:, :prompt_tokens]
        torch.manual_seed(SEED + i)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                   top_k=TOP_K, max_new_tokens=min(NEW_TOKENS, seq_len - ids.shape[1]),
                                   pad_token_id=tokenizer.pad_token_id)
        new = generated[0, ids.shape[1]:].tolist()
        out.append({"prompt": prompt, "completion": tokenizer.decode(new), "seed": SEED + i,
                    "prompt_tokens": int(ids.shape[1]), "new_tokens": len(new)})
    return out


def evaluate_language_model(root: str, folder: str, dataset: str, version: str, tokenizer_id: str,
                            trained_on: str = "") -> tuple[dict[str, float], list[dict[str, Any]], str]:
    """(metrics, completions, the dataset version evaluated) of the HF folder on ``dataset``'s validation split.

    ``trained_on`` (the model's dataset version) is named when ``version`` has no shards of its tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ingest.tokens import open_token_split
    from train.config import TrainConfigError

    try:
        split = open_token_split(root, dataset, version, "validation", tokenizer=tokenizer_id)
    except Exception as exc:  # the catalog's own not-found errors: the user's --dataset
        hint = f" (the model was trained on {dataset} {trained_on})" if trained_on else ""
        raise TrainConfigError(f"invalid 'dataset': {dataset} {version} has no validation tokens for "
                               f"{tokenizer_id}{hint}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    seq_len, vocab = model.config.n_positions, model.config.vocab_size
    if split.manifest["vocab_size"] > vocab:
        raise TrainConfigError(f"invalid 'dataset': its tokenizer has {split.manifest['vocab_size']} tokens, "
                               f"the model {vocab}")
    rows = windows(split.window(0, len(split)), seq_len)
    if not len(rows):
        raise TrainConfigError(f"invalid 'dataset': {dataset} {version} has fewer than {seq_len + 1} "
                               "validation tokens")
    metrics = perplexity(lambda x: model(input_ids=x).logits, rows)
    documents = [doc for doc in split.documents() if len(doc) >= 2][:PROMPTS]
    return metrics, completions(model, tokenizer, documents, seq_len), split.manifest["version"]
