"""Versions are immutable, content-addressed and published atomically; readers never see half a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from ingest.catalog import STAGING_PREFIX, Catalog
from ingest.errors import DatasetNotFound
from ingest.pipeline import run_ingest
from tests.ingest.helpers import ROOT, contract, table, write_csv


def test_rerun_on_same_input_gives_the_same_version(tmp_path: Path, root: str) -> None:
    src = write_csv(table(500), tmp_path / "a.csv")
    a = run_ingest(src, contract(), "ds", root)
    b = run_ingest(src, contract(), "ds", root)
    assert a.version == b.version and a.version.startswith("v-") and len(a.version) == 14
    assert Catalog(root).versions("ds") == [a.version]


def test_new_data_makes_a_child_version_and_old_versions_stay_readable(tmp_path: Path, root: str) -> None:
    first = run_ingest(write_csv(table(500), tmp_path / "a.csv"), contract(), "ds", root)
    second = run_ingest(write_csv(table(600), tmp_path / "b.csv"), contract(), "ds", root)
    catalog = Catalog(root)
    assert catalog.versions("ds") == [first.version, second.version]
    assert second.manifest["parent"] == first.version and first.manifest["parent"] is None
    assert catalog.latest("ds").version == second.version
    assert catalog.get("ds", "latest").version == second.version
    assert catalog.get("ds", first.version).lazy().select(pl.len()).collect().item() == 500


def test_manifest_records_what_readers_and_auditors_need(tmp_path: Path, root: str) -> None:
    v = run_ingest(write_csv(table(400), tmp_path / "a.csv"), contract(), "ds", root)
    m = json.loads((Path(v.path) / "manifest.json").read_text())
    for key in ("dataset", "version", "parent", "sources", "contract", "schema", "counts", "steps", "column_stats",
                "split", "drift", "target", "task", "classes", "features", "normalization", "quarantine"):
        assert key in m, key
    assert m["contract"]["hash"].startswith("sha256:") and m["sources"][0]["checksum"].startswith("sha256:")
    assert m["schema"]["cat=a"] == "Float64" and m["schema"]["y"] == "Int64" and m["schema"]["id"] == "String"
    assert sorted(p.name for p in Path(v.path).iterdir()) == ["manifest.json", "split=train", "split=validation"]
    pq = pl.read_parquet_schema(next((Path(v.path) / "split=train").glob("*.parquet")))
    assert list(pq) == ["id", "x", "n", "cat=a", "cat=b", "cat=c", "y"]
    assert v.preprocessing().input_columns == ["x", "n", "cat=a", "cat=b", "cat=c"]


def test_missing_dataset_or_version_names_what_is_missing(tmp_path: Path, root: str) -> None:
    catalog = Catalog(root)
    with pytest.raises(DatasetNotFound, match="no dataset 'nope'"):
        catalog.latest("nope")
    run_ingest(write_csv(table(100), tmp_path / "a.csv"), contract(), "ds", root)
    with pytest.raises(DatasetNotFound, match="has no version 'v-000000000000'"):
        catalog.get("ds", "v-000000000000")
    with pytest.raises(DatasetNotFound, match="no split 'test'"):
        catalog.latest("ds").lazy("test")


KILLABLE = """
import sys
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract
run_ingest(sys.argv[1], contract(), "ds", sys.argv[2])
"""


def test_job_killed_mid_write_leaves_the_previous_version_intact(tmp_path: Path, root: str) -> None:
    previous = run_ingest(write_csv(table(300), tmp_path / "small.csv"), contract(), "ds", root)
    big = write_csv(pl.concat([table(200_000, seed=s) for s in range(5)]), tmp_path / "big.csv")
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, big, root], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    dataset = Path(root) / "ds"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.suffix == ".parquet" for s in dataset.glob(f"{STAGING_PREFIX}*") for p in s.rglob("*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(dataset.glob(f"{STAGING_PREFIX}*")), "the kill should leave a staging directory behind"
    catalog = Catalog(root)
    assert catalog.versions("ds") == [previous.version]
    assert catalog.latest("ds").version == previous.version
    assert catalog.latest("ds").lazy().select(pl.len()).collect().item() == 300
    # the next run sweeps the dead run's staging directory
    run_ingest(write_csv(table(301), tmp_path / "next.csv"), contract(), "ds", root)
    assert not list(dataset.glob(f"{STAGING_PREFIX}*"))


def test_large_inputs_split_into_buckets_give_the_same_rows_and_counts(tmp_path: Path, root: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest import pipeline

    df = table(3000)
    src = write_csv(pl.concat([df, df.head(100), df.slice(50, 20).with_columns(pl.col("n") + 1)]), tmp_path / "b.csv")
    whole = run_ingest(src, contract(), "one", root)
    monkeypatch.setattr(pipeline, "BUCKET_BYTES", {"csv": 20_000})
    split = run_ingest(src, contract(), "many", root)
    assert split.manifest["buckets"] > 3 and whole.manifest["buckets"] == 1
    assert split.manifest["counts"] == whole.manifest["counts"]
    assert split.lazy().sort("id").collect().equals(whole.lazy().sort("id").collect())
    for col, stats in whole.manifest["normalization"].items():
        assert split.manifest["normalization"][col] == pytest.approx(stats)
