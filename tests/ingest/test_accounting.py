"""Nothing is lost: rows_in = rows_out + rows_quarantined + rows_deduplicated, on any input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV, contract

cells = {
    "id": st.one_of(st.sampled_from(["K1", "K2", "K3", "K10", "bad", ""]), st.integers(0, 25).map(lambda i: f"K{i}")),
    "x": st.one_of(st.floats(-120, 120, allow_nan=False).map(lambda f: f"{f:.3f}"),
                   st.sampled_from(["", "nan", "inf", "1,5", "abc", "1e2"]), st.floats(-1, 1).map(str)),
    "n": st.one_of(st.integers(-5, 1200).map(str), st.sampled_from(["", "2.5", "x"])),
    "cat": st.sampled_from(["a", "b", "c", "a", "b", "d", "", " a "]),
    "y": st.sampled_from(["yes", "no", "yes", "no", "yes", "no", "", "maybe"]),
}
rows = st.lists(st.fixed_dictionaries(cells), min_size=10, max_size=80)


def _identity(version) -> None:
    c = version.manifest["counts"]
    assert c["rows_in"] == c["rows_out"] + c["rows_quarantined"] + c["rows_deduplicated"]
    assert c["identity_holds"] is True
    assert version.lazy().select(pl.len()).collect().item() == c["rows_out"]
    q = version.quarantine()
    assert (q.select(pl.len()).collect().item() if q is not None else 0) == c["rows_quarantined"]


def test_identity_holds_on_the_shipped_table(tmp_path: Path) -> None:
    v = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "customers", str(tmp_path))
    _identity(v)
    assert v.manifest["counts"]["rows_in"] == 3000


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=rows, key_mode=st.sampled_from(["first", "last", "quarantine"]),
       outliers=st.sampled_from([None, "clip", "quarantine"]))
def test_identity_holds_on_random_dirty_frames(data: list[dict], key_mode: str, outliers: str | None) -> None:
    patches = {"x": {"nullable": True, "fill": "median"}, "cat": {"nullable": True, "fill": "mode"}}
    if outliers:
        patches["n"] = {"outliers": {"method": "iqr", "threshold": 0.5, "action": outliers}}
    spec = contract(deduplicate={"key": key_mode}, cast_error_tolerance=1.0, column_patches=patches)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "r.csv"
        pl.DataFrame(data, schema=dict.fromkeys(cells, pl.String)).write_csv(src)
        try:
            v = run_ingest(str(src), spec, "r", str(Path(tmp) / "cat"))
        except Exception as exc:  # only "every row rejected" may stop a run on such input
            assert "no valid rows" in str(exc), exc
            return
        _identity(v)
        assert v.manifest["counts"]["rows_in"] == len(data)
