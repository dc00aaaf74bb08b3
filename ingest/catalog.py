"""The dataset catalog: immutable versions under ``<root>/<name>/<version>/`` and a LATEST pointer.

A run writes into a hidden staging directory, names the version by the hash of what it wrote,
then publishes with one ``rename`` (atomic on a POSIX filesystem) and moves ``LATEST`` with an
atomic replace. Readers only ever see directories that have a ``manifest.json`` (written last,
before the rename); a killed run leaves only a ``.staging-*`` directory, which readers ignore
and the next run removes. A run that fails because the disk is full or read-only removes its
staging directory and raises :class:`StorageError`, one line that says the latest is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from cluster.storage import describe, remedy, storage_errors
from ingest.errors import DatasetNotFound, StorageError

if TYPE_CHECKING:
    import ray.data

    from models.preprocessing import Preprocessing

MANIFEST = "manifest.json"
LATEST = "LATEST"
STAGING_PREFIX = ".staging-"
SPLITS = ("train", "validation")
SMALL_BYTES = 64 * 1024**2  # versions up to this size reach Ray as in-memory Arrow tables


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: str
    path: str
    manifest: dict[str, Any]

    def files(self, split: str | None = None) -> list[str]:
        splits = [split] if split is not None else [s for s in SPLITS if (Path(self.path) / f"split={s}").is_dir()]
        for s in splits:
            if s not in SPLITS:
                raise DatasetNotFound(f"dataset {self.name} {self.version}: no split {s!r} (have {list(SPLITS)})")
        return [str(p) for s in splits for p in sorted((Path(self.path) / f"split={s}").glob("*.parquet"))]

    def lazy(self, split: str | None = None) -> pl.LazyFrame:
        """The version as a LazyFrame; without ``split`` both splits, with a ``split`` column."""
        if split is not None:
            return pl.scan_parquet(self.files(split))
        return pl.scan_parquet(self.files(), hive_partitioning=True)

    def ray_dataset(self, split: str | None = None) -> ray.data.Dataset:
        """The version as a Ray Dataset (with a ``split`` column when no split is named).

        Versions under ``SMALL_BYTES`` are read here and handed to Ray as Arrow tables: Ray
        Data's read tasks cost 10-25 s of worker start-up on a 2-core node, far more than
        reading a few MB. Larger versions are read by Ray's Parquet tasks, in parallel.
        """
        import ray.data

        files = self.files(split)
        if sum(Path(f).stat().st_size for f in files) <= SMALL_BYTES:
            return ray.data.from_arrow(self.lazy(split).collect().to_arrow())
        if split is not None:
            return ray.data.read_parquet(files)
        return ray.data.read_parquet(files, partitioning=ray.data.datasource.Partitioning("hive"))

    def preprocessing(self) -> Preprocessing:
        from models.preprocessing import Preprocessing

        return Preprocessing.from_manifest(self.manifest)

    def quarantine(self) -> pl.LazyFrame | None:
        files = sorted((Path(self.path) / "quarantine").glob("*.parquet"))
        return pl.scan_parquet(files) if files else None


class Catalog:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def dataset_dir(self, name: str) -> Path:
        return self.root / name

    def versions(self, name: str) -> list[str]:
        """Published versions, oldest first."""
        directory = self.dataset_dir(name)
        if not directory.is_dir():
            raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
        found = []
        for child in directory.iterdir():
            manifest = child / MANIFEST
            if child.name.startswith(".") or not manifest.is_file():
                continue
            found.append((json.loads(manifest.read_text()).get("created_at", ""), child.name))
        return [v for _, v in sorted(found)]

    def latest_version(self, name: str) -> str | None:
        pointer = self.dataset_dir(name) / LATEST
        if not pointer.is_file():
            return None
        return json.loads(pointer.read_text())["version"]

    def latest(self, name: str) -> DatasetVersion:
        if not self.dataset_dir(name).is_dir():
            raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
        version = self.latest_version(name)
        if version is None:
            raise DatasetNotFound(f"dataset {name!r} under {self.root} has no published version")
        return self.get(name, version)

    def get(self, name: str, version: str) -> DatasetVersion:
        if version == "latest":
            return self.latest(name)
        path = self.dataset_dir(name) / version
        manifest = path / MANIFEST
        if not manifest.is_file():
            if not self.dataset_dir(name).is_dir():
                raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
            raise DatasetNotFound(f"dataset {name!r} has no version {version!r} (have {self.versions(name)})")
        return DatasetVersion(name, version, str(path), json.loads(manifest.read_text()))

    # -- writing (used by the pipeline) ------------------------------------------------------

    def writing(self, name: str) -> AbstractContextManager[None]:
        """Around a run: a full or read-only filesystem becomes one StorageError line."""
        return storage_errors(self.dataset_dir(name), lambda problem: self._write_error(name, problem))

    def _write_error(self, name: str, problem: str) -> StorageError:
        latest = self.latest_version(name) if self.dataset_dir(name).is_dir() else None
        kept = f"latest is still {latest}" if latest else "the dataset has no version yet"
        return StorageError(f"dataset {name!r}: cannot write a new version under {self.root}: "
                            f"{describe(problem, self.dataset_dir(name))}; nothing was published ({kept}) — "
                            f"{remedy(problem)}, or point --root / RAYLINE_DATASETS_ROOT at another disk")

    def stage(self, name: str) -> Path:
        """A fresh private directory for one run; stale ones of dead runs are removed first.

        Made before the expensive passes, so a read-only catalog fails at once (under ``writing``).
        """
        directory = self.dataset_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        self.clean_stale(name)
        path = directory / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def clean_stale(self, name: str) -> list[str]:
        removed = []
        for child in self.dataset_dir(name).glob(f"{STAGING_PREFIX}*"):
            pid = child.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed

    def publish(self, name: str, staging: Path, version: str, manifest: dict[str, Any]) -> DatasetVersion:
        """Manifest last into staging, then one rename; an identical version already there is reused.

        The new LATEST is written aside before the rename, so once the version is in place only
        renames remain: a disk that fills up cannot leave a published version LATEST misses.
        """
        target = self.dataset_dir(name) / version
        pointer = _write_json_aside(self.dataset_dir(name) / LATEST, {"version": version})
        try:
            if (target / MANIFEST).is_file():
                shutil.rmtree(staging, ignore_errors=True)
                existing = self.get(name, version)
            else:
                _write_json(staging / MANIFEST, manifest)
                os.replace(staging, target) if not target.exists() else _replace_dir(staging, target)
                existing = DatasetVersion(name, version, str(target), manifest)
        except BaseException:
            pointer.unlink(missing_ok=True)
            raise
        os.replace(pointer, self.dataset_dir(name) / LATEST)
        return existing


def _replace_dir(staging: Path, target: Path) -> None:
    """A directory without a manifest at the target is debris of an older crash: replace it."""
    shutil.rmtree(target)
    os.replace(staging, target)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    os.replace(_write_json_aside(path, data), path)


def _write_json_aside(path: Path, data: dict[str, Any]) -> Path:
    """``data`` written and synced to a hidden sibling of ``path`` (removed if the write fails)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
