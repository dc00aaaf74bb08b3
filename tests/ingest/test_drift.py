"""Drift: a shifted copy is flagged (warn or fail, per contract); a resample of the same data is not."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.catalog import Catalog
from ingest.drift import psi
from ingest.errors import DriftError
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract, table, write_csv


def test_psi_is_zero_for_identical_and_large_for_disjoint_distributions() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.9, 0.1], [0.1, 0.9]) > 1


def test_resample_is_not_drift_but_a_shifted_copy_is(tmp_path: Path, root: str) -> None:
    base = run_ingest(write_csv(table(5000, seed=1), tmp_path / "base.csv"), contract(), "d", root)
    assert base.manifest["drift"]["compared"] is False
    resample = table(5000, seed=1).sample(fraction=1.0, with_replacement=True, seed=9)
    resample = resample.with_columns(pl.Series("id", [f"K{i}" for i in range(resample.height)]))
    same = run_ingest(write_csv(resample, tmp_path / "resample.csv"), contract(), "d", root)
    assert same.manifest["drift"]["breached"] == []
    assert same.manifest["drift"]["columns"]["x"]["psi"] < 0.05
    shifted = run_ingest(write_csv(table(5000, seed=2, shift=1.0), tmp_path / "shift.csv"), contract(), "d", root)
    report = shifted.manifest["drift"]
    assert report["parent"] == same.version and "x" in report["breached"]
    assert report["columns"]["x"]["psi"] > 0.25
    assert report["columns"]["cat"]["psi"] < 0.05  # categories were not shifted


def test_null_rate_change_is_drift(tmp_path: Path, root: str) -> None:
    spec = contract(column_patches={"x": {"nullable": True, "fill": "mean"}})
    run_ingest(write_csv(table(2000), tmp_path / "a.csv"), spec, "n", root)
    holes = table(2000, seed=5).with_columns(pl.when(pl.col("n") < 150).then(None).otherwise(pl.col("x")).alias("x"))
    v = run_ingest(write_csv(holes, tmp_path / "b.csv"), spec, "n", root)
    col = v.manifest["drift"]["columns"]["x"]
    assert col["null_rate_change"] > 0.25 and "x" in v.manifest["drift"]["breached"]


def test_drift_action_fail_publishes_nothing(tmp_path: Path, root: str) -> None:
    spec = contract(drift={"action": "fail", "psi_threshold": 0.2})
    first = run_ingest(write_csv(table(3000), tmp_path / "a.csv"), spec, "f", root)
    with pytest.raises(DriftError, match=r"drift against v-\w+ above threshold in x \(psi="):
        run_ingest(write_csv(table(3000, seed=3, shift=2.0), tmp_path / "b.csv"), spec, "f", root)
    assert Catalog(root).versions("f") == [first.version]
    assert Catalog(root).latest("f").version == first.version
