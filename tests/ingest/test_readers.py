"""Readers: the latest or a named version as a Polars LazyFrame or a Ray Dataset, per split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ingest.catalog import Catalog
from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV


def test_latest_version_reads_as_ray_dataset_and_matches_polars(ray_cluster: None, root: str) -> None:
    v = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "customers", root)
    latest = Catalog(root).latest("customers")
    batch = latest.ray_dataset(split="train").take_batch(100_000, batch_format="numpy")
    pre = latest.preprocessing()
    matrix = pre.to_matrix(batch)
    assert matrix.shape == (v.manifest["split"]["rows"]["train"], pre.num_inputs)
    assert np.allclose(matrix[:, pre.input_columns.index("age")].mean(), 0, atol=1e-3)  # stored stats fit train
    assert "split" in latest.ray_dataset().schema().names
    assert latest.lazy("validation").select(pl.len()).collect().item() == v.manifest["split"]["rows"]["validation"]
    assert set(latest.lazy().select("split").unique().collect()["split"]) == {"train", "validation"}


def test_large_versions_are_read_by_ray_parquet_tasks(ray_cluster: None, root: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest import catalog

    v = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "customers", root)
    monkeypatch.setattr(catalog, "SMALL_BYTES", 0)
    assert v.ray_dataset(split="validation").count() == v.manifest["split"]["rows"]["validation"]
