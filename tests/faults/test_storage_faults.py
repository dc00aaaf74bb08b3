"""Fault tests: the datasets root or the checkpoint storage is full or read-only.

The faults are real, not mocked: each test mounts a small tmpfs in a private user + mount
namespace (``unshare --user --map-root-user --mount``), held open by a ``sleep``. The ingest
job runs inside that namespace as a real process (``nsenter``); the test reads the same files
through ``/proc/<pid>/root``, and saves checkpoints through that path too (the kernel's own
ENOSPC / EROFS either way). Skipped only where user or mount namespaces cannot be created, and
never under ``CI=true``: there a missing namespace fails, so the README's fault figures are never
quoted from tests that did not run (as a missing helm tool fails the chart tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import polars as pl
import pytest
import torch
import yaml

from cluster.storage import space
from ingest.catalog import Catalog
from tests.faults.figures import record
from tests.ingest.helpers import contract, table, write_csv
from tests.train.helpers import save_tabular_mlp_checkpoint, trained_tabular_mlp
from train.checkpoint import (
    Checkpointer,
    CheckpointError,
    TrainState,
    checkpoint_dir_name,
    latest_complete,
    read_state,
    verify,
)

ROOT = Path(__file__).resolve().parents[2]
DISK_SIZE = "256k"
SMALL_ROWS, LARGE_ROWS = 2_000, 80_000  # ~40 KB and ~700 KB of Parquet: v1 fits, the second does not
DATASET = "accounts"
LEFT_FREE = 8 * 1024  # what the "other writer" leaves on the checkpoint disk


class PrivateDisk:
    """A tmpfs only one namespace sees: jobs run in it, the test looks in through /proc."""

    def __init__(self, holder: subprocess.Popen[str], mountpoint: Path) -> None:
        self.holder = holder
        self.mountpoint = mountpoint  # the path inside the namespace
        self.view = Path(f"/proc/{holder.pid}/root{mountpoint}")  # the same files, seen from here

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        enter = ["nsenter", f"--target={self.holder.pid}", "--user", "--mount", f"--wd={ROOT}"]
        return subprocess.run([*enter, *cmd], env=env, capture_output=True, text=True, timeout=300)

    def remount_read_only(self) -> None:
        done = self.run("mount", "-o", "remount,ro", str(self.mountpoint))
        assert done.returncode == 0, done.stderr

    def fill(self, leave: int) -> int:
        """Take all but ``leave`` bytes (another writer filling the disk); returns the bytes free."""
        (self.view / "filler").write_bytes(b"\0" * (space(self.view)[0] - leave))
        return space(self.view)[0]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip on a developer's machine; under CI=true a fault test that cannot run is a failure."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so the disk-fault tests must run here (not skipped)")
    pytest.skip(reason)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PrivateDisk]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    script = f"mount -t tmpfs -o size={DISK_SIZE} tmpfs {mountpoint} && echo ready && exec sleep 900"
    try:
        holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        skip_unless_ci("unshare (util-linux) is not installed")
    assert holder.stdout is not None and holder.stderr is not None
    if holder.stdout.readline().strip() != "ready":
        skip_unless_ci(f"no private user + mount namespace here: {holder.stderr.read().strip()}")
    yield PrivateDisk(holder, mountpoint)
    holder.kill()
    holder.wait(timeout=30)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, str]:
    """Tables of one contract on the ordinary disk (only the catalog is small): small, large, and
    large with 9 rows in 10 out of range (its quarantine alone outgrows the disk, in the validate pass)."""
    spec = tmp_path / "contract.yaml"
    spec.write_text(yaml.safe_dump(contract()))
    large = table(LARGE_ROWS, seed=2)
    dirty = large.with_columns(pl.when(pl.col("n") % 10 != 0).then(500.0).otherwise(pl.col("x")).alias("x"))
    return {"contract": str(spec), "small": write_csv(table(SMALL_ROWS, seed=1), tmp_path / "small.csv"),
            "large": write_csv(large, tmp_path / "large.csv"), "dirty": write_csv(dirty, tmp_path / "dirty.csv")}


def ingest(disk: PrivateDisk, sources: dict[str, str], size: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m jobs.ingest`` inside the namespace, its catalog on the small disk."""
    env = {**os.environ, "RAYLINE_DATASETS_ROOT": str(disk.mountpoint / "catalog"),
           "RAYLINE_STATE_DIR": str(tmp_path / "state")}
    return disk.run(sys.executable, "-m", "jobs.ingest", "--source", sources[size], "--contract",
                    sources["contract"], "--dataset", DATASET, env=env)


def published_v1(disk: PrivateDisk, sources: dict[str, str], tmp_path: Path) -> str:
    done = ingest(disk, sources, "small", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return Catalog(disk.view / "catalog").latest(DATASET).version


def checksums(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (hidden ones too) with its sha256: any change, any leftover shows."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The job's last stderr line, after asserting it is the one-line error and no traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("ingest: error: "), done.stderr[-3000:]
    return line


def steps_started(done: subprocess.CompletedProcess[str]) -> set[str]:
    """Pipeline steps the job's JSON progress lines mention."""
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    return {x["step"] for x in lines if "step" in x}


def assert_v1_still_latest(catalog: Catalog, v1: str) -> int:
    """LATEST resolves to v1 and v1 reads whole, as its manifest says; returns its rows."""
    latest = catalog.latest(DATASET)
    assert latest.version == v1 and catalog.versions(DATASET) == [v1]
    rows = latest.lazy().collect().height
    assert rows == latest.manifest["counts"]["rows_out"] > 0
    assert {f["path"]: f["bytes"] for f in latest.manifest["files"]} == {
        str(Path(p).relative_to(latest.path)): Path(p).stat().st_size for p in latest.files()}
    return rows


def second_ingest_fails(disk: PrivateDisk, sources: dict[str, str], tmp_path: Path, problem: str,
                        fault: Callable[[], None] = lambda: None, size: str = "large"
                        ) -> tuple[set[str], dict[str, Any]]:
    """Publish v1, apply ``fault``, ingest the ``size`` table: it must fail in one line naming ``problem``
    and leave v1 byte for byte, still LATEST, with nothing beside it. Returns the steps it ran and figures."""
    v1 = published_v1(disk, sources, tmp_path)
    dataset_dir = disk.view / "catalog" / DATASET
    before, free_before = checksums(dataset_dir), space(disk.view)[0]
    fault()

    started = time.monotonic()
    done = ingest(disk, sources, size, tmp_path)
    seconds = time.monotonic() - started

    line = error_line(done)
    assert done.returncode == 7
    assert problem in line and f"latest is still {v1}" in line
    assert checksums(dataset_dir) == before  # v1 and LATEST unchanged, no staging or partial version left
    rows = assert_v1_still_latest(Catalog(disk.view / "catalog"), v1)
    steps = steps_started(done)
    return steps, {"exit_code": done.returncode, "message": line, "steps_started": sorted(steps),
                   "free_bytes_before": free_before, "free_bytes_after": space(disk.view)[0],
                   "v1_files_intact": len(before), "v1_rows_read": rows, "failed_after_s": round(seconds, 2)}


@pytest.mark.parametrize(("size", "fills_in"), [("large", "clean"), ("dirty", "validate")])
def test_ingest_on_a_full_disk_fails_in_one_line_and_keeps_the_previous_version(
        disk: PrivateDisk, sources: dict[str, str], tmp_path: Path, size: str, fills_in: str) -> None:
    steps, figures = second_ingest_fails(disk, sources, tmp_path, "no space left on device", size=size)
    assert fills_in in steps and ("clean" in steps) == (fills_in == "clean")  # the pass the disk filled in
    record(f"test_ingest_on_a_full_disk_fails_in_one_line_and_keeps_the_previous_version[{size}]",
           disk_bytes=space(disk.view)[1], source_bytes=Path(sources[size]).stat().st_size, **figures)


def test_ingest_into_a_read_only_root_fails_before_the_work_and_changes_nothing(
        disk: PrivateDisk, sources: dict[str, str], tmp_path: Path) -> None:
    steps, figures = second_ingest_fails(disk, sources, tmp_path, "read-only file system",
                                         fault=disk.remount_read_only)
    assert not steps & {"validate", "deduplicate", "clean"}  # refused before reading a single row
    record("test_ingest_into_a_read_only_root_fails_before_the_work_and_changes_nothing", **figures)


def assert_restores_step_3(run_dir: Path) -> Path:
    """The newest complete checkpoint is step 3's, and it brings back step 3's exact weights."""
    latest = latest_complete(run_dir)
    assert latest is not None and latest.name == checkpoint_dir_name(3)
    expected, _ = trained_tabular_mlp(3)
    strategy, scheduler = trained_tabular_mlp(0)
    state = read_state(latest, 0, strategy, {"scheduler": scheduler})
    assert state.step == 3
    for key, value in expected.raw_model.state_dict().items():
        assert torch.equal(strategy.raw_model.state_dict()[key], value), key
    return latest


def save_into(run_dir: Path, step: int) -> Path:
    directory = run_dir / checkpoint_dir_name(step)
    directory.mkdir(parents=True, exist_ok=True)
    save_tabular_mlp_checkpoint(directory, step)
    return directory


def test_checkpoint_save_on_a_full_disk_fails_clearly_and_the_previous_one_restores(
        disk: PrivateDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = disk.view / "checkpoints" / "run"
    previous = save_into(run_dir, 3)
    before = checksums(previous)
    free = disk.fill(leave=LEFT_FREE)

    with pytest.raises(CheckpointError) as direct:
        save_into(run_dir, 6)
    monkeypatch.setattr(tempfile, "tempdir", str(disk.view))  # Checkpointer stages under TMPDIR
    strategy, scheduler = trained_tabular_mlp(6)
    with pytest.raises(CheckpointError) as staged:
        Checkpointer(0, 1).save(strategy, TrainState(step=6), {"scheduler": scheduler}, {})

    for err in (direct.value, staged.value):
        assert "no space left on device" in str(err) and "\n" not in str(err)
    with pytest.raises(CheckpointError):
        verify(run_dir / checkpoint_dir_name(6))  # the half-written one is refused...
    assert_restores_step_3(run_dir)  # ...and step 3 is still the latest, whole
    assert checksums(previous) == before
    assert not list(disk.view.glob("rayline-ckpt-*"))  # the Checkpointer removed its staging
    record("test_checkpoint_save_on_a_full_disk_fails_clearly_and_the_previous_one_restores",
           free_bytes_at_save=free, message=str(direct.value), checkpointer_message=str(staged.value),
           half_written_files=len(list((run_dir / checkpoint_dir_name(6)).iterdir())),
           previous_files_intact=len(before), restored_step=3)


def test_checkpoint_save_on_a_read_only_disk_fails_clearly_and_the_previous_one_restores(
        disk: PrivateDisk, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = disk.view / "checkpoints" / "run"
    previous = save_into(run_dir, 3)
    before = checksums(previous)
    disk.remount_read_only()

    monkeypatch.setattr(tempfile, "tempdir", str(disk.view))
    strategy, scheduler = trained_tabular_mlp(6)
    with pytest.raises(CheckpointError) as staged:
        Checkpointer(0, 1).save(strategy, TrainState(step=6), {"scheduler": scheduler}, {})

    assert "read-only file system" in str(staged.value) and "\n" not in str(staged.value)
    assert_restores_step_3(run_dir)
    assert checksums(previous) == before and sorted(p.name for p in run_dir.iterdir()) == [previous.name]
    record("test_checkpoint_save_on_a_read_only_disk_fails_clearly_and_the_previous_one_restores",
           message=str(staged.value), previous_files_intact=len(before), restored_step=3)


@pytest.mark.timeout(120)
def test_under_ci_a_missing_namespace_fails_instead_of_skipping(tmp_path: Path) -> None:
    """The fixture run in a child pytest with no ``unshare`` on PATH: skipped locally, failed under CI=true."""
    def run(ci: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": str(tmp_path), "CI": ci, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                               "-k", "read_only_root"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=110, check=False)

    failed = run("true")
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout[-2000:]  # the fixture failed
    assert "CI=true, so the disk-fault tests must run here" in failed.stdout
