"""The one checkpoint component every strategy uses.

A checkpoint is a directory merged by Ray Train from every rank's files:

- the strategy's files (``model.pt``, optimizer, scaler, per-rank communication state…);
- ``train_state.json`` (rank 0): step, epoch, batches consumed in the epoch, world size;
- ``extras.pt`` (rank 0): loop-owned state such as the LR scheduler;
- ``rng_rank{r}.pt``: torch/numpy/python (and CUDA) RNG states of rank ``r``;
- ``COMPLETE_rank{r}.json``: written last by rank ``r``, the sha256 of each of its files;
- ``COMPLETE_export.json``: where a strategy exports the plain model only after every rank's
  shards are stored (DeepSpeed: rank 0 consolidates them), the sha256 of ``model.pt``, written
  into the stored checkpoint after it.

Each rank writes into a fresh temporary directory and hands it to ``ray.train.report``,
which uploads it and registers the checkpoint only once every rank reported. On load,
every rank's manifest must be present, ``model.pt`` must be vouched for by one, and every
digest must match, so a checkpoint
interrupted mid-save (or damaged later) is refused with :class:`CheckpointError` instead
of loading wrong. When the latest checkpoint is refused that way, the restore falls back to
the newest older checkpoint of the run that verifies, with a warning, instead of failing the
run. The run's storage is wherever ``checkpoints_root`` says (a local folder or ``s3://``): Ray
Train uploads and downloads through its own storage filesystem, so the same code serves both.
A save that fails because the disk is full or read-only raises a one-line
:class:`CheckpointError` saying so; the checkpoints saved before stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from cluster import files
from cluster.errors import RaylineError
from cluster.storage import describe, remedy, storage_errors

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FILE = "train_state.json"
EXTRAS_FILE = "extras.pt"
CHECKPOINT_PREFIX = "checkpoint_step"
REDO_SUFFIX = "-redo"  # a step trained again after a fallback (see Checkpointer)
EXPORT_MANIFEST = "COMPLETE_export.json"  # model.pt written into the stored checkpoint after the ranks' files
MODEL_FILE = "model.pt"  # the plain full state_dict every strategy exports (train.strategy re-exports it)


class CheckpointError(RaylineError):
    """A checkpoint is incomplete or corrupt."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """Where training is: optimizer steps taken, epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1


def manifest_file(rank: int) -> str:
    return f"COMPLETE_rank{rank}.json"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_dir_name(step: int) -> str:
    """Zero-padded, so the names sort in step order."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _storage(directory: Path) -> AbstractContextManager[None]:
    """A full or read-only disk under ``directory`` as one CheckpointError line."""
    def error(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint save to {directory} failed: {describe(problem, directory)}; "
                               f"the previous checkpoint is kept — {remedy(problem)}, or point "
                               f"checkpoints_root / TMPDIR at another disk")

    return storage_errors(directory, error)


def write_rank_files(directory: Path, rank: int, strategy: Any, state: TrainState,
                     extras: dict[str, Stateful]) -> None:
    """Write rank ``rank``'s part of a checkpoint into ``directory``, manifest last."""
    with _storage(directory):
        names = list(strategy.save(directory, rank))
        if rank == 0:
            (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
            torch.save({k: v.state_dict() for k, v in extras.items()}, directory / EXTRAS_FILE)
            names += [STATE_FILE, EXTRAS_FILE]
        torch.save(rng_state(), directory / rng_file(rank))
        names.append(rng_file(rank))
        manifest = {name: _digest(directory / name) for name in names}
        files.atomic_write(directory / manifest_file(rank), json.dumps(manifest, sort_keys=True))


def verify(directory: Path) -> TrainState:
    """Check every rank's manifest and digests; returns the saved TrainState."""
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {STATE_FILE}: incomplete")
    try:  # a save cut short by a full disk can leave it empty or truncated
        state = TrainState(**json.loads(state_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {STATE_FILE} is unreadable ({exc}): incomplete") from None
    manifests = []
    for rank in range(state.world_size):
        manifest_path = directory / manifest_file(rank)
        if not manifest_path.is_file():
            raise CheckpointError(f"checkpoint {directory} lacks rank {rank}'s manifest: incomplete save")
        manifests.append(json.loads(manifest_path.read_text()))
    if (directory / EXPORT_MANIFEST).is_file():
        manifests.append(json.loads((directory / EXPORT_MANIFEST).read_text()))
    if not any(MODEL_FILE in manifest for manifest in manifests):
        raise CheckpointError(f"checkpoint {directory} has no exported {MODEL_FILE}: incomplete save")
    for manifest in manifests:
        for name, digest in manifest.items():
            path = directory / name
            if not path.is_file() or _digest(path) != digest:
                raise CheckpointError(f"checkpoint {directory}: {name} is missing or does not match its digest")
    return state


def stored_url(checkpoint: Any) -> str:
    """Where a ``ray.train.Checkpoint`` is stored, as a URL ``cluster.files`` reads and writes."""
    from pyarrow.fs import LocalFileSystem, PyFileSystem

    fs, path = checkpoint.filesystem, str(checkpoint.path)
    if fs is None or isinstance(fs, LocalFileSystem):
        return path
    if isinstance(fs, PyFileSystem):  # an fsspec filesystem behind pyarrow (any other URL scheme)
        protocol = fs.handler.fs.protocol
        return f"{protocol if isinstance(protocol, str) else protocol[0]}://{path}"
    return f"{fs.type_name}://{path}"


def write_export(url: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Put ``model.pt`` into the stored checkpoint at ``url``, then its manifest (the export is complete)."""
    with _storage(Path(tempfile.gettempdir())), tempfile.TemporaryDirectory(prefix="rayline-export-") as tmp:
        local = Path(tmp) / MODEL_FILE
        torch.save(state_dict, local)
        files.upload_tree(Path(tmp), url)
        files.atomic_write(files.join(url, EXPORT_MANIFEST), json.dumps({MODEL_FILE: _digest(local)}))


def latest_complete(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run that verifies, for restores outside Ray Train (inspection, export).

    Ray Train registers a checkpoint only once every rank's upload finished; on disk, a save cut
    short (full disk, killed node) leaves a directory without its manifests, which is skipped here.
    ``run_dir`` is local; for a run on object storage use :func:`restore_latest_good`.
    """
    for directory in sorted(files.local_path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"), reverse=True):
        try:
            verify(directory)
        except CheckpointError:
            continue
        return directory
    return None


def run_checkpoints(checkpoint: Any) -> list[Any]:
    """``checkpoint`` and the older checkpoints of its run beside it, newest first (any storage)."""
    import ray.train
    from pyarrow.fs import FileSelector, FileType

    parent, name = str(checkpoint.path).rstrip("/").rsplit("/", 1)
    infos = checkpoint.filesystem.get_file_info(FileSelector(parent))
    older = sorted((i.base_name for i in infos if i.type == FileType.Directory
                    and i.base_name.startswith(CHECKPOINT_PREFIX) and i.base_name < name), reverse=True)
    return [checkpoint, *(ray.train.Checkpoint(f"{parent}/{n}", filesystem=checkpoint.filesystem) for n in older)]


def restore_latest_good(checkpoint: Any, load: Callable[[Path], T]) -> T:
    """``load`` the checkpoint; when it is partial or corrupt, the newest older one of the run that loads.

    Every rank sees the same files, so every rank makes the same choice. Raises
    :class:`CheckpointError` only when no checkpoint of the run verifies.
    """
    refused: list[str] = []
    for candidate in run_checkpoints(checkpoint):
        with candidate.as_directory() as directory:
            try:
                result = load(Path(directory))
            except CheckpointError as exc:  # named by where it is stored, not by the download's temp folder
                refused.append(str(exc).replace(str(directory), str(candidate.path)))
                continue
        if refused:
            log.warning("latest checkpoint refused (%s); resumed from the older %s instead", "; ".join(refused),
                        candidate.path)
        return result
    raise CheckpointError(f"no checkpoint of the run verifies: {'; '.join(refused)}")


def read_state(directory: Path, rank: int, strategy: Any, extras: dict[str, Stateful]) -> TrainState:
    """Load a verified checkpoint into ``strategy`` and ``extras`` and restore this rank's RNG."""
    state = verify(directory)
    strategy.load(directory, rank)
    saved_extras = torch.load(directory / EXTRAS_FILE, weights_only=False)
    for key, obj in extras.items():
        obj.load_state_dict(saved_extras[key])
    rng_path = directory / rng_file(rank)
    if rng_path.is_file():  # absent only when the world grew since the save
        set_rng_state(torch.load(rng_path, weights_only=False))
    return state


class Checkpointer:
    """Saves through ``ray.train.report`` and restores from ``ray.train.get_checkpoint()``.

    After a fallback from a refused checkpoint at step ``n``, the steps up to ``n`` are trained
    again; their checkpoints get a ``-redo`` suffix, so they never share a folder with a
    checkpoint Ray still has registered (its keep-N eviction of the refused one would delete
    the new one's files).
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.redo_through: int | None = None

    def save(self, strategy: Any, state: TrainState, extras: dict[str, Stateful], metrics: dict[str, Any]) -> None:
        import ray.train

        state.world_size = self.world_size
        name = checkpoint_dir_name(state.step)
        if self.redo_through is not None and state.step <= self.redo_through:
            name += REDO_SUFFIX
        with _storage(Path(tempfile.gettempdir())):
            staging = Path(tempfile.mkdtemp(prefix="rayline-ckpt-"))
        try:
            write_rank_files(staging, self.rank, strategy, state, extras)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)),
                             checkpoint_dir_name=name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = ray.train.get_checkpoint()  # this one, unless Ray skipped the report after a worker failure
        if stored is not None and str(stored.path).rstrip("/").endswith(f"/{name}"):
            strategy.export(stored_url(stored), self.rank)
        else:
            log.warning("checkpoint %s was not stored (report skipped after a worker failure); no export", name)

    def restore(self, strategy: Any, extras: dict[str, Stateful]) -> TrainState | None:
        """The state of the latest reported checkpoint (after a failure or a resubmit), or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        state = restore_latest_good(checkpoint, lambda directory: read_state(directory, self.rank, strategy, extras))
        refused_step = checkpoint_step(str(checkpoint.path))
        if state.step < refused_step:
            self.redo_through = refused_step
        return state


def checkpoint_step(path: str) -> int:
    """The step a checkpoint folder was saved at (``…/checkpoint_step00000036[-redo]`` -> 36)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return int(name.removeprefix(CHECKPOINT_PREFIX).removesuffix(REDO_SUFFIX))
