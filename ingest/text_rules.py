"""What makes a document usable, and when two documents are the same.

Stored text is *normalised*: Unicode NFC, and line ends ``\\r\\n``/``\\r`` turned into ``\\n``;
nothing else changes, so a decoded token shard gives back exactly that text.

Rules, in checking order (a quarantined row names the first it broke): ``encoding`` (the bytes
were not UTF-8, or the text holds U+FFFD or NUL, the marks of a lossy decode upstream),
``empty`` (null or only whitespace), ``too_short`` / ``too_long`` (characters after
normalising), then one ``pii`` rule per pattern the contract lists.

Exact duplicates share a *content hash*: sha256 of the text in NFC, whitespace runs collapsed to
one space and trimmed, case-folded (Python's ``str.casefold``). The first in source order is
kept. The split is a function of that hash and the contract's seed, so a document lands in the
same split in every version and whatever the order of the sources.
"""

from __future__ import annotations

import hashlib
import unicodedata

import polars as pl

from ingest.rules import say
from ingest.text_contract import TEXT, TextContract
from ingest.text_sources import DECODE_ERROR

SPLIT_BUCKETS = 10_000


def normalised(columns: tuple[str, ...]) -> pl.Expr:
    """The stored text: the text columns joined by a blank line, NFC, ``\\n`` line ends."""
    joined = pl.concat_str([pl.col(c) for c in columns], separator="\n\n", ignore_nulls=True) \
        if len(columns) > 1 else pl.col(columns[0])
    return joined.str.normalize("NFC").str.replace_all("\r\n", "\n", literal=True) \
        .str.replace_all("\r", "\n", literal=True).alias(TEXT)


def content_key(text: str) -> str:
    """What exact de-duplication compares: NFC, whitespace collapsed, case-folded."""
    return " ".join(unicodedata.normalize("NFC", text).split()).casefold()


def content_hash(text: str) -> str:
    return hashlib.sha256(content_key(text).encode()).hexdigest()


def in_validation(digest: str, seed: int, fraction: float) -> bool:
    """Deterministic split by content hash: the same document is always on the same side."""
    bucket = int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:8], 16) % SPLIT_BUCKETS
    return bucket < round(fraction * SPLIT_BUCKETS)


def checks(spec: TextContract) -> list[tuple[pl.Expr, str, str, pl.Expr]]:
    """Every (condition, rule, column, reason) of a text contract, in checking order."""
    text, column = pl.col(TEXT), "+".join(spec.text)
    chars = text.str.len_chars()
    found = [
        (pl.col(DECODE_ERROR).is_not_null(), "encoding", column, pl.col(DECODE_ERROR)),
        (text.str.contains("\ufffd", literal=True), "encoding", column,
         pl.lit("text holds U+FFFD (replacement character): decoded lossily upstream")),
        (text.str.contains("\x00", literal=True), "encoding", column, pl.lit("text holds NUL characters")),
        (text.is_null() | (text.str.strip_chars() == ""), "empty", column, pl.lit("no text (empty or whitespace)")),
        (chars < spec.min_chars, "too_short", column, say("", chars, f" characters, below min_chars {spec.min_chars}")),
        (chars > spec.max_chars, "too_long", column, say("", chars, f" characters, above max_chars {spec.max_chars}")),
    ]
    for name, pattern in spec.patterns().items():
        found.append((text.str.contains(pattern), "pii", column, pl.lit(f"matches PII pattern {name!r}")))
    return found


def near_duplicates(texts: list[str], spec: TextContract) -> dict[int, int]:
    """Index of each near duplicate → index of the earlier document it resembles (MinHash LSH).

    Documents are seen in order; each is queried against those kept so far, so the result is
    deterministic for a given order (and ``datasketch``'s fixed seed).
    """
    near = spec.deduplicate.near
    if near is None or not texts:
        return {}
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
    kept: dict[int, MinHash] = {}
    found: dict[int, int] = {}
    for i, text in enumerate(texts):
        words = content_key(text).split(" ")
        size = near.shingle_words
        shingles = {" ".join(words[j:j + size]) for j in range(max(1, len(words) - size + 1))}
        sketch = MinHash(num_perm=near.num_perm)
        sketch.update_batch([s.encode() for s in sorted(shingles)])
        matches = sorted(int(m) for m in lsh.query(sketch) if kept[int(m)].jaccard(sketch) >= near.threshold)
        if matches:
            found[i] = matches[0]
            continue
        lsh.insert(str(i), sketch)
        kept[i] = sketch
    return found
