"""Training data: resolved in the driver, read on workers through Ray Data.

Driver side, ``resolve_data`` finds the ingest dataset version in the catalog (or builds the
synthetic token stream) before any worker starts, and fails naming ``data.dataset`` /
``data.version`` when it does not exist.

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
from models.registry import DataSpec
from train.config import SyntheticTokens, TrainConfig, TrainConfigError

TOKENS = "tokens"


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
        return _synthetic_plan(config.data.synthetic_tokens, config.seed)
    return _ingest_plan(config, settings)


def _ingest_plan(config: TrainConfig, settings: Settings) -> DataPlan:
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
    pre = found.preprocessing()
    # Materialised once in the object store: epochs and evaluations then re-read memory, not Parquet.
    datasets = {split: found.ray_dataset(split=split).materialize() for split in ("train", "validation")}
    rows = {split: ds.count() for split, ds in datasets.items()}
    spec = DataSpec("tabular", num_inputs=pre.num_inputs, num_outputs=pre.num_outputs)
    return DataPlan(datasets=datasets, spec=spec, task=pre.task, rows=rows, preprocessing=pre.to_dict(),
                    dataset_version=found, description={"dataset": name, "dataset_version": str(found.version)})


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


def _synthetic_plan(options: SyntheticTokens, seed: int) -> DataPlan:
    import ray.data

    arrays = {"train": synthetic_tokens(options, options.train_sequences, seed),
              "validation": synthetic_tokens(options, options.validation_sequences, seed, split=1)}
    datasets = {split: ray.data.from_items([{TOKENS: row} for row in arr]) for split, arr in arrays.items()}
    spec = DataSpec("tokens", vocab_size=options.vocab_size, seq_len=options.seq_len)
    return DataPlan(datasets=datasets, spec=spec, task="language_modeling",
                    rows={k: len(v) for k, v in arrays.items()},
                    description={"dataset": "synthetic_tokens", "dataset_version": f"seed{seed}"})


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
