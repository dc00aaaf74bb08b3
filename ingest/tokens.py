"""Token datasets: a text version tokenized once into flat, memory-mappable shards (nanoGPT / llm.c).

Layout, beside the version (local path or ``s3://``, through :mod:`cluster.files`)::

    <dataset>/<version>/tokens/<tokenizer id>/tokenizer.json
                                             /<split>-00000.bin   tokens, little-endian uint16
                                                                  (vocabulary <= 65535) else uint32
                                             /<split>-00000.idx   int64 document starts, n_docs + 1
                                             /manifest.json       written last: dtype, eos, tokens,
                                                                  documents, sha256 of every file
    <dataset>/<version>/tokens/CURRENT       which tokenizer id readers get by default

Each document's tokens are followed by the eos token; ``idx[i]:idx[i+1]-1`` is document ``i``
without it, so ``decode`` of that slice is the stored (normalised) text. A shard holds at most
``shard_tokens`` tokens and never splits a document. Documents outside the tokenizer section's
``min_tokens``/``max_tokens`` are left out and counted by reason: ``documents_in = documents +
skipped``. Tokenizing runs in batches of documents through ``encode_batch``, which spreads a
batch over the tokenizer's threads (Rust, no GIL); ``encode_batch_fast`` skips the character
offsets nobody here reads (measured ~1.5x faster than ``encode_batch``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cluster import files
from ingest import drift, text_profile
from ingest.catalog import MANIFEST, STALE_AFTER_S, Catalog, DatasetVersion, checksums, last_write, publish_tree
from ingest.contract import DriftSpec, load_model
from ingest.errors import ContractError, DatasetNotFound
from ingest.text_contract import TEXT, TokenizerSpec
from ingest.tokenizer import BATCH_DOCS, load_tokenizer_file, tokenizer_id, train_bpe

TOKENS = "tokens"
CURRENT = "CURRENT"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "validation")
UINT16_MAX_VOCAB = 65535  # ids 0..65534 fit; 65535 is left free as nanoGPT does
DRIFT_BINS = 10
DRIFT_TOKENS = 500  # most frequent tokens (and the parent's) compared for drift


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def tokenizer_spec(version: DatasetVersion, **overrides: Any) -> TokenizerSpec:
    """The version's contract tokenizer section, with the job's overrides (None keeps a value)."""
    if version.manifest.get("kind") != "text":
        raise ContractError(f"dataset {version.name} {version.version} is not a text dataset")
    body = dict(version.manifest["contract"]["body"].get("tokenizer") or {})
    body.update({k: v for k, v in overrides.items() if v is not None})
    return load_model(body, TokenizerSpec)


def build_token_dataset(root: str, dataset: str, version: str = "latest", *, tokenizer_file: str | None = None,
                        batch_docs: int = BATCH_DOCS, **overrides: Any) -> dict[str, Any]:
    """Train (or load) the tokenizer and write the token shards of both splits; returns their manifest.

    Idempotent: the same version and tokenizer give the same id, and a published one is reused.
    """
    catalog = Catalog(root)
    dv = catalog.get(dataset, version)
    spec = tokenizer_spec(dv, file=tokenizer_file, **overrides)
    started = time.perf_counter()
    if spec.file:
        tokenizer = load_tokenizer_file(spec.file, spec)
        origin = {"kind": "file", "path": str(spec.file)}
    else:
        train = texts_of(dv, "train")
        tokenizer = train_bpe(iter(train), spec, length=len(train))
        origin = {"kind": "trained", "on": "train split", "vocab_size": spec.vocab_size,
                  "min_frequency": spec.min_frequency, "special_tokens": list(spec.special_tokens)}
    serialised = tokenizer.to_str()
    tok_id = tokenizer_id(serialised)
    target = files.join(dv.path, TOKENS, tok_id)
    existing = files.read_bytes(files.join(target, MANIFEST))
    if existing is None:
        near = files.local_path(files.join(dv.path, TOKENS)) if files.is_local(target) else None
        if near is not None:  # staged beside the target: publishing is one rename on the same disk
            near.mkdir(parents=True, exist_ok=True)
            _clean_stale(near)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{tok_id}-", dir=near))
        try:
            (staging / TOKENIZER_FILE).write_text(serialised)
            parent = _parent_profile(catalog, dv)
            manifest = _write_shards(dv, tokenizer, spec, staging, batch_docs, parent)
            manifest["drift"] = _drift(dv, manifest["profile"], parent)
            manifest |= {"tokenizer": {"id": tok_id, "file": TOKENIZER_FILE, "origin": origin,
                                       "tokenizers": package_version("tokenizers")},
                         "dataset": dataset, "version": dv.version, "seconds": time.perf_counter() - started}
            publish_tree(staging, target, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files.atomic_write(files.join(dv.path, TOKENS, CURRENT), json.dumps({"tokenizer": tok_id}))
    return json.loads(files.read_bytes(files.join(target, MANIFEST)) or b"{}")


def _parent_profile(catalog: Catalog, dv: DatasetVersion) -> dict[str, Any]:
    """The token distributions of the parent version's current shards (empty when it has none)."""
    parent = dv.manifest.get("parent")
    if not parent:
        return {}
    try:
        _, manifest = token_manifest(catalog.get(dv.name, parent))
    except DatasetNotFound:
        return {}
    return manifest.get("profile", {}).get("distributions", {})


def _drift(dv: DatasetVersion, profile: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """Token drift against the parent version's shards: tokens per document, token frequencies.

    Tokens compare by their text (byte-level pieces such as ``Ġself``), so versions with
    different trained tokenizers still compare on the pieces both have."""
    spec = DriftSpec.model_validate(dv.manifest["contract"]["body"].get("drift") or {})
    report = drift.compare({"distributions": parent} if parent else None, profile, spec,
                           dv.manifest.get("parent") if parent else None)
    drift.enforce(report, f"{dv.name} {dv.version} tokens")
    return report


def _clean_stale(directory: Path) -> None:
    """Remove staging that killed runs left, once nobody has written to it for ``STALE_AFTER_S``."""
    for child in directory.glob(".staging-*"):
        if time.time() - last_write(child) > STALE_AFTER_S:
            shutil.rmtree(child, ignore_errors=True)


def _write_shards(dv: DatasetVersion, tokenizer: Any, spec: TokenizerSpec, staging: Path, batch_docs: int,
                  parent: dict[str, Any]) -> dict[str, Any]:
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    eos = tokenizer.token_to_id(spec.eos)
    splits: dict[str, Any] = {}
    lengths: list[int] = []
    counts = np.zeros(vocab, dtype=np.int64)
    for split in SPLITS:
        writer = _ShardWriter(staging, split, dtype, eos, spec.shard_tokens)
        skipped = {"too_few_tokens": 0, "too_many_tokens": 0}
        texts = texts_of(dv, split)
        for lo in range(0, len(texts), batch_docs):
            batch = texts.slice(lo, batch_docs).to_list()
            kept = []
            for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):  # ids, no offsets
                n = len(encoding.ids)
                if spec.min_tokens and n < spec.min_tokens:
                    skipped["too_few_tokens"] += 1
                elif spec.max_tokens and n > spec.max_tokens:
                    skipped["too_many_tokens"] += 1
                else:
                    kept.append(np.asarray(encoding.ids, dtype=dtype))
                    writer.add(kept[-1])
                    lengths.append(n)
            if kept:
                counts += np.bincount(np.concatenate(kept), minlength=vocab)[:vocab]
        shards = writer.close()
        splits[split] = {"documents_in": len(texts), "documents": sum(s["documents"] for s in shards),
                         "tokens": sum(s["tokens"] for s in shards), "skipped": skipped, "shards": shards}
    top = {tokenizer.id_to_token(int(i)): int(counts[i]) for i in np.flatnonzero(counts)}
    profile = text_profile.distributions({"tokens_per_document": np.asarray(lengths, dtype=np.float64)},
                                         {"tokens": top}, DRIFT_BINS, DRIFT_TOKENS, parent)
    return {"kind": "tokens", "profile": profile, "dtype": dtype.name, "vocab_size": vocab, "eos": spec.eos,
            "eos_id": eos,
            "layout": "document tokens then eos; idx holds int64 document starts (n_docs + 1)",
            "splits": splits}


class _ShardWriter:
    """Appends documents (tokens + eos) to ``<split>-NNNNN.bin``, a new shard past ``limit`` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, eos: int, limit: int) -> None:
        self.directory, self.split, self.dtype, self.eos, self.limit = directory, split, dtype, eos, limit
        self.shards: list[dict[str, Any]] = []
        self.fh: Any = None
        self.starts: list[int] = []
        self.position = 0

    def add(self, ids: np.ndarray) -> None:
        size = ids.size + 1
        if self.fh is None or (self.position and self.position + size > self.limit):
            self._next()
        self.starts.append(self.position)
        self.fh.write(ids.tobytes())
        self.fh.write(np.asarray([self.eos], dtype=self.dtype).tobytes())
        self.position += size

    def _next(self) -> None:
        self._finish()
        name = f"{self.split}-{len(self.shards):05d}"
        self.fh = open(self.directory / f"{name}.bin", "wb")  # noqa: SIM115 (closed by _finish)
        self.shards.append({"bin": f"{name}.bin", "idx": f"{name}.idx"})
        self.starts, self.position = [], 0

    def _finish(self) -> None:
        if self.fh is None:
            return
        self.fh.close()
        starts = np.asarray([*self.starts, self.position], dtype="<i8")
        (self.directory / self.shards[-1]["idx"]).write_bytes(starts.tobytes())
        self.shards[-1].update(tokens=self.position, documents=len(self.starts))
        self.fh = None

    def close(self) -> list[dict[str, Any]]:
        if self.fh is None:  # an empty split still gets one (empty) shard, so readers need no special case
            self._next()
        self._finish()
        return self.shards


@dataclass(frozen=True)
class TokenSplit:
    """One split's shards, memory-mapped: ``tokens`` when there is one shard, ``window`` across shards."""

    shards: tuple[np.ndarray, ...]
    starts: tuple[np.ndarray, ...]  # per shard, int64 document starts (n_docs + 1)
    manifest: dict[str, Any]
    directory: str  # where tokenizer.json is (a local folder)

    def __len__(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def tokens(self) -> np.ndarray:
        """The split as one array (a memmap, no copy) when it is one shard, as small corpora are."""
        if len(self.shards) != 1:
            raise ValueError(f"{len(self.shards)} shards: read them with window() or rank_window()")
        return self.shards[0]

    def window(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the split (a view within one shard, a copy across shards)."""
        pieces, offset = [], 0
        for shard in self.shards:
            lo, hi = max(start - offset, 0), min(stop - offset, shard.size)
            if lo < hi:
                pieces.append(shard[lo:hi])
            offset += shard.size
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else self.shards[0][:0]

    def rank_window(self, rank: int, world_size: int) -> np.ndarray:
        """The contiguous part of the split rank ``rank`` of ``world_size`` reads (equal sizes)."""
        start, stop = rank_bounds(len(self), rank, world_size)
        return self.window(start, stop)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's tokens (without its eos), in order."""
        for shard, starts in zip(self.shards, self.starts, strict=True):
            for lo, hi in itertools.pairwise(starts):
                yield shard[lo:hi - 1]

    def tokenizer(self):  # -> tokenizers.Tokenizer
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(Path(self.directory) / TOKENIZER_FILE))


def rank_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``: ``total // world_size`` tokens each, the remainder dropped
    (every rank gets the same number of steps, as DDP needs)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    share = total // world_size
    return rank * share, (rank + 1) * share


def token_manifest(dv: DatasetVersion, tokenizer: str | None = None) -> tuple[str, dict[str, Any]]:
    """(folder, manifest) of a version's token shards: ``tokenizer``'s, else the CURRENT ones."""
    base = files.join(dv.path, TOKENS)
    if tokenizer is None:
        pointer = files.read_bytes(files.join(base, CURRENT))
        if pointer is None:
            raise DatasetNotFound(f"dataset {dv.name} {dv.version} has no token shards yet (run jobs.tokenize)")
        tokenizer = json.loads(pointer)["tokenizer"]
    target = files.join(base, tokenizer)
    raw = files.read_bytes(files.join(target, MANIFEST))
    if raw is None:
        raise DatasetNotFound(f"dataset {dv.name} {dv.version} has no token shards for {tokenizer}")
    return target, json.loads(raw)


def open_token_split(root: str, dataset: str, version: str, split: str, tokenizer: str | None = None) -> TokenSplit:
    """A split's token shards, memory-mapped (files on s3:// are fetched once into a local cache,
    checked against the manifest's sha256)."""
    if split not in SPLITS:
        raise DatasetNotFound(f"no split {split!r} (have {list(SPLITS)})")
    dv = Catalog(root).get(dataset, version)
    target, manifest = token_manifest(dv, tokenizer)
    tokenizer = manifest["tokenizer"]["id"]
    local = target if files.is_local(target) else _cached(target, manifest, dataset, dv.version, tokenizer)
    directory = files.local_path(local)
    dtype = np.dtype(manifest["dtype"])
    shards, starts = [], []
    for shard in manifest["splits"][split]["shards"]:
        path = directory / shard["bin"]
        shards.append(np.memmap(path, dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype=dtype))
        starts.append(np.fromfile(directory / shard["idx"], dtype="<i8"))
    return TokenSplit(tuple(shards), tuple(starts), manifest, str(directory))


def _cached(target: str, manifest: dict[str, Any], dataset: str, version: str, tokenizer: str) -> str:
    """A local copy of remote shards (memmap needs a file), reused while it matches the manifest."""
    cache = Path(tempfile.gettempdir()) / "rayline-tokens" / dataset / version / tokenizer
    if cache.is_dir() and checksums(cache) == manifest["checksums"]:
        return str(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache.parent))
    files.download_tree(target, partial)
    (partial / MANIFEST).unlink(missing_ok=True)
    if checksums(partial) != manifest["checksums"]:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetNotFound(f"{target}: downloaded token shards do not match their manifest's checksums")
    shutil.rmtree(cache, ignore_errors=True)
    partial.replace(cache)
    return str(cache)


def texts_of(version: DatasetVersion, split: str) -> pl.Series:
    """The stored (normalised) documents of a split, in order: what the shards decode back to."""
    return version.lazy(split).select(TEXT).collect()[TEXT]
