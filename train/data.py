"""Training data: resolved in the driver, read on workers through Ray Data.

Driver side, ``resolve_data`` finds the ingest dataset version in the catalog (or builds the
synthetic token stream) before any worker starts, and fails naming ``data.dataset`` /
``data.version`` when it does not exist. A GPT on a text dataset reads the version's token
shards (``ingest.tokens``) and packs them into rows of ``seq_len + 1`` tokens
(:func:`packed_sequences`); from there token datasets and synthetic tokens are the same rows
in the same ``tokens`` column, read by the same machinery.

Worker side, ``RankBatches`` makes data order exact and resumable: every worker reads the
whole (small) dataset in a fixed order (``preserve_order``) with a local shuffle seeded by
``seed + epoch``, cuts it into *global* batches of ``batch_size × world_size`` rows and keeps
its own slice. So each step's rows depend only on (seed, epoch, step), and resuming at
optimizer step ``k`` of an epoch is skipping ``k × accumulation`` global batches.

Every rank runs the same number of forward passes, at every ZeRO stage (stage 3 all-gathers
parameters inside each forward, so a rank that skipped one would hang the others): training
drops the ragged last batch, and validation pads each rank's share of it to a full batch and
says how many rows are real, so metrics stay exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from cluster.settings import Settings
from models.gpt import GPTConfig
from models.registry import DataSpec
from train.config import SyntheticTokens, TrainConfig, TrainConfigError

TOKENS = "tokens"
BLOCK_BYTES = 32 * 1024**2  # token rows reach Ray in blocks of at most this size


@dataclass
class DataPlan:
    """What the driver hands to TorchTrainer and the workers."""

    datasets: dict[str, Any]  # split name → ray.data.Dataset
    spec: DataSpec
    task: str  # classification | regression | language_modeling
    rows: dict[str, int]
    preprocessing: dict[str, Any] | None = None  # models.preprocessing.Preprocessing.to_dict()
    dataset_version: Any = None  # ingest DatasetVersion, for lineage
    description: dict[str, str] = field(default_factory=dict)


def quiet_ray_data() -> None:
    """No Ray Data progress bars in job logs (every epoch re-reads the data)."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def resolve_data(config: TrainConfig, settings: Settings) -> DataPlan:
    quiet_ray_data()
    if config.data.synthetic_tokens is not None:
        return _synthetic_plan(config, config.data.synthetic_tokens)
    if config.data_kind == "tokens":
        return _token_plan(config, settings)
    return _ingest_plan(config, settings)


def _find_version(config: TrainConfig, settings: Settings) -> Any:  # -> ingest.catalog.DatasetVersion
    """``data.dataset`` at ``data.version`` from the catalog; a miss is a one-line error naming the field."""
    from ingest.catalog import Catalog

    name, version = config.data.dataset, config.data.version
    catalog = Catalog(settings.datasets_root)
    try:
        found = catalog.latest(name) if version == "latest" else catalog.get(name, version)
    except Exception as exc:  # the catalog's own error types; any miss is the user's field
        raise TrainConfigError(f"invalid 'data.version': dataset {name!r} version {version!r} not found in "
                               f"{settings.datasets_root}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if found is None:
        raise TrainConfigError(f"invalid 'data.dataset': no dataset {name!r} in {settings.datasets_root}")
    return found


def _ingest_plan(config: TrainConfig, settings: Settings) -> DataPlan:
    found = _find_version(config, settings)
    if found.manifest.get("kind") == "text":
        raise TrainConfigError(f"invalid 'data.dataset': {found.name} {found.version} is a text dataset; model "
                               f"{config.model.name} needs a table (text trains model gpt)")
    pre = found.preprocessing()
    # Materialised once in the object store: epochs and evaluations then re-read memory, not Parquet.
    datasets = {split: found.ray_dataset(split=split).materialize() for split in ("train", "validation")}
    rows = {split: ds.count() for split, ds in datasets.items()}
    spec = DataSpec("tabular", num_inputs=pre.num_inputs, num_outputs=pre.num_outputs)
    return DataPlan(datasets=datasets, spec=spec, task=pre.task, rows=rows, preprocessing=pre.to_dict(),
                    dataset_version=found, description={"dataset": found.name, "dataset_version": str(found.version)})


def _token_plan(config: TrainConfig, settings: Settings) -> DataPlan:
    """A tokenized text version's shards, packed into ``seq_len + 1`` token rows per split.

    ``seq_len`` is ``model.params.seq_len`` (default: the GPT's own, 64); the vocabulary is the
    tokenizer's, from the token manifest. The tokenizer id and token counts join the plan's
    description, so they are MLflow tags and part of the run's fingerprint.
    """
    from ingest.errors import DatasetNotFound
    from ingest.tokens import SPLITS, open_token_split, token_manifest

    found = _find_version(config, settings)
    if found.manifest.get("kind") != "text":
        raise TrainConfigError(f"invalid 'data.dataset': {found.name} {found.version} is a table; model gpt "
                               f"trains on a tokenized text dataset")
    try:
        _, manifest = token_manifest(found, config.data.tokenizer)
    except DatasetNotFound:
        if config.data.tokenizer:
            raise TrainConfigError(f"invalid 'data.tokenizer': {found.name} {found.version} has no token shards "
                                   f"for {config.data.tokenizer!r} (have {_tokenizers(found)})") from None
        raise TrainConfigError(f"invalid 'data.dataset': {found.name} {found.version} is not tokenized yet: run "
                               f"`rayline tokenize --dataset {found.name} --version {found.version}` first") from None
    seq_len = config.model.params.get("seq_len", GPTConfig.seq_len)
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise TrainConfigError(f"invalid 'model.params.seq_len': {seq_len!r} is not a positive whole number")
    tokenizer = manifest["tokenizer"]["id"]
    spec = DataSpec("tokens", vocab_size=int(manifest["vocab_size"]), seq_len=seq_len)
    _check_declared(config, spec, f"the vocabulary of tokenizer {tokenizer}")
    arrays = {}
    for split in SPLITS:
        stream = open_token_split(settings.datasets_root, found.name, found.version, split, tokenizer)
        arrays[split] = packed_sequences(stream, seq_len)
        if not len(arrays[split]):
            raise TrainConfigError(f"invalid 'model.params.seq_len': the {split} split of {found.name} "
                                   f"{found.version} has {len(stream)} tokens, less than one sequence of "
                                   f"seq_len + 1 = {seq_len + 1}")
    counts = {f"{split}_tokens": str(manifest["splits"][split]["tokens"]) for split in SPLITS}
    return DataPlan(datasets=token_datasets(arrays), spec=spec, task="language_modeling",
                    rows={k: len(v) for k, v in arrays.items()}, dataset_version=found,
                    description={"dataset": found.name, "dataset_version": str(found.version),
                                 "tokenizer": tokenizer, **counts})


def _tokenizers(version: Any) -> list[str]:
    from cluster import files
    from ingest.tokens import CURRENT
    from ingest.tokens import TOKENS as TOKENS_DIR

    folder = files.join(version.path, TOKENS_DIR)
    return sorted(n for n in files.listdir(folder) if n != CURRENT) if files.exists(folder) else []


def packed_sequences(split: Any, seq_len: int) -> np.ndarray:
    """A split's token stream cut into consecutive ``[n, seq_len + 1]`` rows (nanoGPT-style packing).

    The stream is the documents in stored order, each followed by its eos token, so a row may
    span documents: the eos separators are the only boundaries and the model learns to predict
    across them, as nanoGPT and llm.c train. Rows do not overlap (row ``i`` is tokens
    ``i·(seq_len+1) .. (i+1)·(seq_len+1)``: inputs are its first ``seq_len`` tokens, targets its
    last ``seq_len``). The tail, fewer than ``seq_len + 1`` tokens, is left out. A one-shard
    split gives a view of its memory map (no copy).
    """
    width = seq_len + 1
    rows = len(split) // width
    return split.window(0, rows * width).reshape(rows, width)


def _check_declared(config: TrainConfig, spec: DataSpec, source: str) -> None:
    """``model.params`` may state ``vocab_size``/``seq_len``; a value the data contradicts is the user's field."""
    for key in ("vocab_size", "seq_len"):
        if key in config.model.params and config.model.params[key] != getattr(spec, key):
            raise TrainConfigError(f"invalid 'model.params.{key}': {config.model.params[key]!r}, but the data has "
                                   f"{key} {getattr(spec, key)} ({source}); remove it or make it {getattr(spec, key)}")


def token_datasets(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Token rows per split as Ray Datasets with one tensor column, ``tokens`` (blocks of <= ``BLOCK_BYTES``)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    out = {}
    for split, rows in arrays.items():
        step = max(1, BLOCK_BYTES // max(rows[:1].nbytes, 1))
        out[split] = ray.data.from_arrow([pa.table({TOKENS: ArrowTensorArray.from_numpy(np.ascontiguousarray(
            rows[lo:lo + step]))}) for lo in range(0, max(len(rows), 1), step)])
    return out


def synthetic_tokens(options: SyntheticTokens, sequences: int, seed: int, split: int = 0) -> np.ndarray:
    """[sequences, seq_len + 1] int32 tokens from a sparse Markov chain fixed by ``seed``; ``split`` picks samples."""
    chain = np.random.default_rng(seed)
    successors = chain.integers(0, options.vocab_size, size=(options.vocab_size, options.successors))
    weights = chain.dirichlet(np.ones(options.successors), size=options.vocab_size).cumsum(axis=1)
    rng = np.random.default_rng([seed, split + 1])
    out = np.empty((sequences, options.seq_len + 1), dtype=np.int32)
    out[:, 0] = rng.integers(0, options.vocab_size, size=sequences)
    for t in range(1, options.seq_len + 1):
        prev = out[:, t - 1]
        pick = (rng.random(sequences)[:, None] > weights[prev]).sum(axis=1).clip(max=options.successors - 1)
        out[:, t] = successors[prev, pick]
    return out


def _synthetic_plan(config: TrainConfig, options: SyntheticTokens) -> DataPlan:
    arrays = {"train": synthetic_tokens(options, options.train_sequences, config.seed),
              "validation": synthetic_tokens(options, options.validation_sequences, config.seed, split=1)}
    spec = DataSpec("tokens", vocab_size=options.vocab_size, seq_len=options.seq_len)
    _check_declared(config, spec, "data.synthetic_tokens")
    return DataPlan(datasets=token_datasets(arrays), spec=spec, task="language_modeling",
                    rows={k: len(v) for k, v in arrays.items()},
                    description={"dataset": "synthetic_tokens", "dataset_version": f"seed{config.seed}"})


class TabularCollate(NumpyBatchCollateFn):
    """Encoded columns → (normalised float32 matrix, target) with the dataset's own preprocessing."""

    def __init__(self, preprocessing: dict[str, Any]) -> None:
        from models.preprocessing import Preprocessing

        self.pre = Preprocessing.from_dict(preprocessing)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.pre.to_matrix(batch))
        target = np.asarray(batch[self.pre.target])
        y = torch.from_numpy(target.astype(np.int64) if self.pre.task == "classification"
                             else target.astype(np.float32).reshape(-1, 1))
        return x, y


class TokenCollate(NumpyBatchCollateFn):
    """Token rows → (inputs, next-token targets)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(np.stack(batch[TOKENS]).astype(np.int64))
        return tokens[:, :-1], tokens[:, 1:]


def collate_for(task: str, preprocessing: dict[str, Any] | None) -> NumpyBatchCollateFn:
    return TokenCollate() if task == "language_modeling" else TabularCollate(preprocessing or {})


def steps_per_epoch(rows: int, batch_size: int, world_size: int, accumulation: int = 1) -> int:
    """Optimizer steps in one epoch: each takes ``accumulation`` global batches of ``batch_size × world_size``."""
    return rows // (batch_size * world_size * accumulation)


class RankBatches:
    """This rank's slice of each global batch, in an order fixed by (seed, epoch)."""

    def __init__(self, iterator: Any, collate: NumpyBatchCollateFn, batch_size: int, rank: int, world_size: int,
                 seed: int, shuffle_buffer: int = 0, device: torch.device | None = None) -> None:
        self.iterator = iterator
        self.collate = collate
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.device = device or torch.device("cpu")

    def _global_batches(self, epoch: int, drop_last: bool,
                        shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        global_batch = self.batch_size * self.world_size
        buffer = max(self.shuffle_buffer, global_batch) if shuffle and self.shuffle_buffer else None
        return iter(self.iterator.iter_torch_batches(
            batch_size=global_batch, collate_fn=self.collate, drop_last=drop_last, device="cpu",
            local_shuffle_buffer_size=buffer, local_shuffle_seed=self.seed + epoch if buffer else None,
        ))

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def steps(self, epoch: int, skip: int = 0, limit: int | None = None,
              accumulation: int = 1) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Optimizer steps ``skip .. limit`` of ``epoch``: each a list of ``accumulation`` micro-batches."""
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, (x, y) in enumerate(self._global_batches(epoch, drop_last=True, shuffle=True)):
            step = index // accumulation
            if limit is not None and step >= limit:
                break
            if step < skip:
                continue
            group.append((self._mine(x).to(self.device, non_blocking=True),
                          self._mine(y).to(self.device, non_blocking=True)))
            if len(group) == accumulation:
                yield group
                group = []

    def padded(self, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The whole split in order as ``(x, y, valid)``: this rank's rows padded to ``batch_size``.

        The same count of equally shaped batches on every rank; only the first ``valid`` rows are real
        (the padding repeats rows of the global batch, which is never empty).
        """
        for index, (x, y) in enumerate(self._global_batches(0, drop_last=False, shuffle=False)):
            if limit is not None and index >= limit:
                break
            mine_x, mine_y = self._mine(x), self._mine(y)
            valid = len(mine_x)
            if valid < self.batch_size:
                fill = torch.arange(self.batch_size - valid) % len(x)
                mine_x, mine_y = torch.cat([mine_x, x[fill]]), torch.cat([mine_y, y[fill]])
            yield mine_x.to(self.device, non_blocking=True), mine_y.to(self.device, non_blocking=True), valid
