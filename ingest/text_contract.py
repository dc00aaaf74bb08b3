"""The contract of a text dataset: which columns hold the text, what a usable document is.

A text contract says ``kind: text``. It names the text column(s) (several are joined with a
blank line), metadata columns kept beside the text, length bounds in characters (and in tokens,
applied when the token shards are built), the PII patterns that quarantine a document, exact
and optional near-duplicate removal, the split and drift settings shared with table contracts,
and the tokenizer to train. Loading validates the contract, so a mistake fails before any data
is read.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster.yamlfile import read_yaml_mapping
from ingest.contract import DriftSpec, SplitSpec, load_model
from ingest.errors import ContractError

TEXT = "text"  # the output column holding the (normalised) document
# Built-in PII patterns a contract can list by name (or give its own as name: regex).
PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "private_key": r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
    "hex_token": r"\b[0-9a-fA-F]{40,}\b",
}
DEFAULT_EXTENSIONS = (".txt", ".md", ".py")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NearDuplicateSpec(_Strict):
    """MinHash over word shingles (``datasketch``): a document whose estimated Jaccard similarity
    to an earlier kept one reaches ``threshold`` is removed as a near duplicate."""

    threshold: float = Field(0.85, gt=0, le=1)
    num_perm: int = Field(64, ge=16, le=512)
    shingle_words: int = Field(5, ge=1, le=20)


class TextDedupeSpec(_Strict):
    exact: bool = True
    near: NearDuplicateSpec | None = None


class TokenizerSpec(_Strict):
    """A byte-level BPE trained on the train split (or ``file``: a tokenizer.json the user gives)."""

    vocab_size: int = Field(8192, ge=260, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    special_tokens: tuple[str, ...] = ("<|endoftext|>",)
    eos: str = "<|endoftext|>"  # put between documents in the token shards
    file: str | None = None
    min_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    shard_tokens: int = Field(100_000_000, ge=1024)  # tokens per shard file at most (llm.c: 100M)

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerSpec:
        if self.eos not in self.special_tokens:
            raise ValueError(f"eos {self.eos!r} must be one of special_tokens {list(self.special_tokens)}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens is above max_tokens")
        return self


class TextContract(_Strict):
    kind: Literal["text"]
    dataset: str | None = None
    description: str = ""
    text: tuple[str, ...]  # column(s) holding the text; a folder source has one column, ``text``
    metadata: tuple[str, ...] = ()  # columns kept beside the text (a folder source has ``path``)
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # files a folder source reads (one document a file)
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(1_000_000, ge=1)
    pii: tuple[str, ...] = ()  # built-in pattern names (see PII_PATTERNS) …
    pii_patterns: dict[str, str] = Field(default_factory=dict)  # … and the contract's own, name: regex
    deduplicate: TextDedupeSpec = TextDedupeSpec()
    split: SplitSpec = SplitSpec()
    drift: DriftSpec = DriftSpec()
    vocabulary_size: int = Field(200, ge=10, le=10_000)  # most frequent words compared for drift
    tokenizer: TokenizerSpec = TokenizerSpec()

    @field_validator("text", "metadata", "extensions", "pii", mode="before")
    @classmethod
    def _as_tuple(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> TextContract:
        if not self.text:
            raise ValueError("name at least one text column")
        both = sorted(set(self.text) & set(self.metadata))
        if both:
            raise ValueError(f"columns {both} are listed as text and as metadata")
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars is above max_chars")
        unknown = sorted(set(self.pii) - set(PII_PATTERNS))
        if unknown:
            raise ValueError(f"unknown pii pattern(s) {unknown}; built in: {sorted(PII_PATTERNS)} "
                             f"(give your own under pii_patterns)")
        for name, pattern in self.pii_patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pii pattern {name!r} does not compile: {exc}") from None
        return self

    @property
    def names(self) -> list[str]:
        """The source columns the contract reads (text, then metadata): what the quarantine keeps."""
        return [*self.text, *self.metadata]

    def patterns(self) -> dict[str, str]:
        """PII rules in checking order: the listed built-ins, then the contract's own."""
        return {**{n: PII_PATTERNS[n] for n in self.pii}, **self.pii_patterns}

    def digest(self) -> str:
        """Content hash of the contract's meaning; the tokenizer section is not part of it (it does
        not change which documents a version holds)."""
        body = self.model_dump(mode="json", exclude={"tokenizer"})
        return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def is_text_contract(source: str | Path | dict[str, Any] | BaseModel) -> bool:
    """True when ``source`` (a path, a dict or a model) is a text contract (``kind: text``)."""
    if isinstance(source, TextContract):
        return True
    if isinstance(source, BaseModel):
        return False
    if isinstance(source, dict):
        return source.get("kind") == "text"
    return read_yaml_mapping(source, ContractError, "contract file").get("kind") == "text"


def load_text_contract(source: str | Path | TextContract | dict[str, Any]) -> TextContract:
    """A TextContract from a YAML path, a dict or an existing one; ContractError names the field."""
    return load_model(source, TextContract)
