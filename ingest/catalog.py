"""The dataset catalog: immutable versions under ``<root>/<name>/<version>/`` and a LATEST pointer.

The root is a local path, ``file://``, ``s3://`` or another fsspec URL (see :mod:`cluster.files`).
A run writes into a private local staging directory and names the version by the hash of what it
wrote. A version is published when its ``manifest.json`` exists: written last, it lists every
file with its sha256, and readers ignore any folder without one.

- Local root: staging is a hidden ``.staging-<pid>@<host>-<id>`` folder beside the versions; the
  manifest goes in last, then one ``rename`` (atomic on POSIX) publishes the folder.
- Object storage (no rename): the files are uploaded under the version's prefix, then the
  manifest. Because the version name is the content hash, two runs of the same content upload the
  same bytes; a killed upload leaves a prefix without a manifest that readers never see.

``LATEST`` moves by compare-and-swap (:func:`cluster.files.write_if`: a lock-guarded replace on
disk, ``If-Match``/``If-None-Match`` on S3) to the version of the run that *started* last, so two
ingests racing to publish both land, in either finishing order, and LATEST names one of them.
Stale staging is removed by owner and age: a folder whose owner is a dead process on this host, or
that nobody has written for ``STALE_AFTER_S`` (another pod's run on a shared volume is never judged
by this host's process table). A run that fails because the disk is full or read-only removes its
staging directory and raises :class:`StorageError`, one line that says the latest is untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from cluster import files
from cluster.processes import process_alive
from cluster.storage import describe, remedy, storage_errors
from ingest.errors import DatasetNotFound, StorageError

if TYPE_CHECKING:
    import ray.data

    from models.preprocessing import Preprocessing

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "LATEST"
STAGING_PREFIX = ".staging-"
SPLITS = ("train", "validation")
SMALL_BYTES = 64 * 1024**2  # versions up to this size reach Ray as in-memory Arrow tables
STALE_AFTER_S = 24 * 3600.0  # staging nobody wrote to for this long is debris, whoever owns it
LATEST_ATTEMPTS = 50


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: str
    path: str
    manifest: dict[str, Any]

    def files(self, split: str | None = None) -> list[str]:
        """The version's Parquet files (of one split, or both), as the manifest lists them."""
        for s in [split] if split is not None else []:
            if s not in SPLITS:
                raise DatasetNotFound(f"dataset {self.name} {self.version}: no split {s!r} (have {list(SPLITS)})")
        prefixes = tuple(f"split={s}/" for s in ([split] if split is not None else SPLITS))
        return [files.join(self.path, f["path"]) for f in self.manifest["files"] if f["path"].startswith(prefixes)]

    def lazy(self, split: str | None = None) -> pl.LazyFrame:
        """The version as a LazyFrame; without ``split`` both splits, with a ``split`` column."""
        options = files.polars_options(self.path)
        if split is not None:
            return pl.scan_parquet(self.files(split), storage_options=options)
        return pl.scan_parquet(self.files(), hive_partitioning=True, storage_options=options)

    def ray_dataset(self, split: str | None = None) -> ray.data.Dataset:
        """The version as a Ray Dataset (with a ``split`` column when no split is named).

        Versions under ``SMALL_BYTES`` are read here and handed to Ray as Arrow tables: Ray
        Data's read tasks cost 10-25 s of worker start-up on a 2-core node, far more than
        reading a few MB. Larger versions are read by Ray's Parquet tasks, in parallel.
        """
        import ray.data

        paths = self.files(split)
        size = sum(f["bytes"] for f in self.manifest["files"] if files.join(self.path, f["path"]) in paths)
        if size <= SMALL_BYTES:
            return ray.data.from_arrow(self.lazy(split).collect().to_arrow())
        fs, _ = files.arrow_filesystem(self.path)
        if fs is not None:
            paths = [p.split("://", 1)[1] for p in paths]
        partitioning = None if split is not None else ray.data.datasource.Partitioning("hive")
        return ray.data.read_parquet(paths, filesystem=fs, partitioning=partitioning)

    def preprocessing(self) -> Preprocessing:
        from models.preprocessing import Preprocessing

        return Preprocessing.from_manifest(self.manifest)

    def quarantine(self) -> pl.LazyFrame | None:
        names = sorted(n for n in self.manifest.get("checksums", {}) if n.startswith("quarantine/"))
        if not names and files.is_local(self.path):  # versions published before manifests had checksums
            names = [f"quarantine/{p.name}" for p in sorted(files.local_path(self.path).glob("quarantine/*.parquet"))]
        paths = [files.join(self.path, n) for n in names]
        return pl.scan_parquet(paths, storage_options=files.polars_options(self.path)) if paths else None


class Catalog:
    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self.local = files.is_local(self.root)
        self._started: dict[str, int] = {}  # staging dir -> when its run started (orders LATEST)

    def dataset_dir(self, name: str) -> str:
        return files.join(self.root, name)

    def has(self, name: str) -> bool:
        """True when the dataset's folder exists (published or not)."""
        return files.exists(self.dataset_dir(name))

    def versions(self, name: str) -> list[str]:
        """Published versions (those with a manifest), oldest first."""
        if not self.has(name):
            raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
        found = []
        for child in files.listdir(self.dataset_dir(name)):
            if child.startswith(".") or child == LATEST:
                continue
            manifest = files.read_bytes(files.join(self.dataset_dir(name), child, MANIFEST))
            if manifest is not None:
                found.append((json.loads(manifest).get("created_at", ""), child))
        return [v for _, v in sorted(found)]

    def latest_version(self, name: str) -> str | None:
        pointer = files.read_bytes(files.join(self.dataset_dir(name), LATEST))
        return None if pointer is None else json.loads(pointer)["version"]

    def latest(self, name: str) -> DatasetVersion:
        version = self.latest_version(name)
        if version is None:
            if not self.has(name):
                raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
            raise DatasetNotFound(f"dataset {name!r} under {self.root} has no published version")
        return self.get(name, version)

    def get(self, name: str, version: str) -> DatasetVersion:
        if version == "latest":
            return self.latest(name)
        path = files.join(self.dataset_dir(name), version)
        manifest = files.read_bytes(files.join(path, MANIFEST))
        if manifest is None:
            if not self.has(name):
                raise DatasetNotFound(f"no dataset {name!r} under {self.root}")
            raise DatasetNotFound(f"dataset {name!r} has no version {version!r} (have {self.versions(name)})")
        if self.local:
            path = str(files.local_path(path))
        return DatasetVersion(name, version, path, json.loads(manifest))

    # -- writing (used by the pipeline) ------------------------------------------------------

    def writing(self, name: str) -> AbstractContextManager[None]:
        """Around a run: a full or read-only filesystem becomes one StorageError line."""
        return storage_errors(self._staging_parent(name), lambda problem: self._write_error(name, problem))

    def _staging_parent(self, name: str) -> Path:
        return files.local_path(self.dataset_dir(name)) if self.local else Path(tempfile.gettempdir())

    def _write_error(self, name: str, problem: str) -> StorageError:
        latest = None
        with suppress(Exception):
            latest = self.latest_version(name)
        kept = f"latest is still {latest}" if latest else "the dataset has no version yet"
        where = self._staging_parent(name)
        return StorageError(f"dataset {name!r}: cannot write a new version under {self.root}: "
                            f"{describe(problem, where)}; nothing was published ({kept}) — "
                            f"{remedy(problem)}, or point --root / RAYLINE_DATASETS_ROOT at another disk")

    def stage(self, name: str) -> Path:
        """A fresh private local directory for one run; stale staging is removed first.

        Made before the expensive passes, so a read-only catalog, a missing bucket or refused
        credentials fail at once (one line naming the root).
        """
        files.check_writable(self.dataset_dir(name))
        self.clean_stale(name)
        owner = f"{os.getpid()}@{socket.gethostname()}"
        if self.local:
            directory = files.local_path(self.dataset_dir(name))
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{STAGING_PREFIX}{owner}-{uuid.uuid4().hex[:8]}"
            path.mkdir()
        else:
            path = Path(tempfile.mkdtemp(prefix=f"rayline-{name}-"))
        self._started[str(path)] = time.time_ns()
        return path

    def clean_stale(self, name: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Remove staging left by dead runs: owned by a dead process here, or untouched for ``stale_after_s``."""
        if not self.local:
            return self._clean_stale_remote(name, stale_after_s)
        removed = []
        for child in files.local_path(self.dataset_dir(name)).glob(f"{STAGING_PREFIX}*"):
            owner = child.name.removeprefix(STAGING_PREFIX).rsplit("-", 1)[0]
            pid, _, host = owner.partition("@")
            dead_here = host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
            if dead_here or time.time() - last_write(child) > stale_after_s:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed

    def _clean_stale_remote(self, name: str, stale_after_s: float) -> list[str]:
        """Version prefixes without a manifest (killed uploads) that nobody wrote to for ``stale_after_s``."""
        fs, base = files.filesystem(self.dataset_dir(name))
        removed = []
        for child in files.listdir(self.dataset_dir(name)):
            prefix = f"{base}/{child}"
            if child == LATEST or fs.exists(f"{prefix}/{MANIFEST}"):
                continue
            stamps = [info.get("LastModified") for info in fs.find(prefix, detail=True).values()]
            newest = max((s.timestamp() for s in stamps if s is not None), default=0.0)
            if time.time() - newest > stale_after_s and not fs.exists(f"{prefix}/{MANIFEST}"):
                fs.rm(prefix, recursive=True)
                removed.append(child)
        return removed

    def publish(self, name: str, staging: Path, version: str, manifest: dict[str, Any]) -> DatasetVersion:
        """Manifest (with every file's sha256) last, then LATEST; an identical version already there is reused."""
        started = self._started.pop(str(staging), time.time_ns())
        publish_tree(staging, files.join(self.dataset_dir(name), version), manifest)
        published = self.get(name, version)
        self._move_latest(name, version, started)
        return published

    def _move_latest(self, name: str, version: str, started: int) -> None:
        """Point LATEST at ``version`` unless a run that started later already moved it there first."""
        pointer = files.join(self.dataset_dir(name), LATEST)
        body = json.dumps({"version": version, "run_started_ns": started}, sort_keys=True)
        for _ in range(LATEST_ATTEMPTS):
            current = files.read_versioned(pointer)
            token = None
            if current is not None:
                data, token = current
                held = json.loads(data)
                if held["version"] != version and held.get("run_started_ns", 0) > started:
                    log.warning("dataset %s: LATEST stays at %s, published by a run that started after this one "
                                "(%s is published beside it)", name, held["version"], version)
                    return
            try:
                files.write_if(pointer, body, token)
                return
            except files.WriteConflict:
                continue  # another run moved LATEST in between: reload and decide again
        raise StorageError(f"dataset {name!r}: {version} is published but LATEST under {self.root} kept changing "
                           f"({LATEST_ATTEMPTS} attempts); run the ingest again to point LATEST at it")


def publish_tree(staging: Path, target: str, manifest: dict[str, Any]) -> None:
    """Publish a staged folder at ``target`` (a path or s3:// URL): files, then ``manifest.json`` with
    every file's sha256, last. A target already published (same content-addressed name) is kept."""
    manifest = {**manifest, "checksums": checksums(staging)}
    if files.exists(files.join(target, MANIFEST)):
        shutil.rmtree(staging, ignore_errors=True)
    elif files.is_local(target):
        _publish_local(staging, files.local_path(target), manifest)
    else:
        _publish_remote(staging, target, manifest)


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` by relative path (what the manifest vouches for)."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(8 * 1024 * 1024):
                digest.update(chunk)
        out[str(path.relative_to(directory))] = digest.hexdigest()
    return out


def _publish_local(staging: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Manifest into staging, then one rename; losing the rename to a run of the same content is fine."""
    files.atomic_write(staging / MANIFEST, _json(manifest))
    try:
        if target.exists() and not (target / MANIFEST).is_file():
            shutil.rmtree(target)  # no manifest: debris of an older crash, never a published version
        os.replace(staging, target)
    except OSError:
        if not (target / MANIFEST).is_file():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # a racing run published the same bytes first
    files.fsync_dir(target.parent)


def _publish_remote(staging: Path, target: str, manifest: dict[str, Any]) -> None:
    """Upload the files, then the manifest; then check every file the manifest names is there."""
    try:
        files.upload_tree(staging, target, skip=(MANIFEST,))
        files.atomic_write(files.join(target, MANIFEST), _json(manifest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fs, path = files.filesystem(target)
    present = {p[len(path) + 1:] for p in fs.find(path)}
    missing = sorted(set(manifest["checksums"]) - present)
    if missing:
        raise StorageError(f"{target}: published, but {len(missing)} files are missing ({missing[:3]}); "
                           f"LATEST was not moved — run the ingest again")


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def last_write(directory: Path) -> float:
    """The newest modification time of ``directory`` or anything in it."""
    stamps = [directory.stat().st_mtime]
    for path in directory.rglob("*"):
        with suppress(FileNotFoundError):
            stamps.append(path.stat().st_mtime)
    return max(stamps)
