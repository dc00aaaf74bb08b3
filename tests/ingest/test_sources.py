"""Sources: CSV, Parquet, NDJSON, globs and file:// URLs read alike; malformed files fail clearly."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.errors import SourceError
from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV, contract, table, write_csv


def test_parquet_ndjson_and_csv_give_the_same_version(tmp_path: Path, root: str) -> None:
    df = table(300)
    df.write_parquet(tmp_path / "t.parquet")
    df.write_ndjson(tmp_path / "t.ndjson")
    versions = {run_ingest(str(p), contract(), f"fmt{i}", root).version
                for i, p in enumerate([write_csv(df, tmp_path / "t.csv"), tmp_path / "t.parquet",
                                       tmp_path / "t.ndjson"])}
    assert len(versions) == 1


def test_globs_and_file_urls_read_every_matching_file_with_checksums(tmp_path: Path, root: str) -> None:
    df = table(300)
    for i, part in enumerate(df.iter_slices(100)):
        write_csv(part, tmp_path / f"part-{i}.csv")
    v = run_ingest(str(tmp_path / "part-*.csv"), contract(), "g", root)
    assert v.manifest["counts"]["rows_in"] == 300
    assert [Path(s["path"]).name for s in v.manifest["sources"]] == ["part-0.csv", "part-1.csv", "part-2.csv"]
    assert all(s["checksum"].startswith("sha256:") for s in v.manifest["sources"])
    url = run_ingest([f"file://{tmp_path}/part-{i}.csv" for i in range(3)], contract(), "g", root)
    assert url.version == v.version


def test_sklearn_bundled_table_ingests_as_regression(tmp_path: Path, root: str) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame.insert(0, "pid", [f"P{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    columns = [{"name": "pid", "type": "str", "nullable": False, "role": "key"}]
    columns += [{"name": c, "type": "float", "nullable": False} for c in frame.columns[1:-1]]
    columns.append({"name": "target", "type": "float", "nullable": False, "min": 0, "role": "target"})
    v = run_ingest(str(tmp_path / "diabetes.csv"), {"key": "pid", "target": "target", "task": "regression",
                                                     "columns": columns}, "diabetes", root)
    assert v.manifest["counts"]["rows_out"] == 442 and v.manifest["task"] == "regression"
    pre = v.preprocessing()
    assert pre.num_inputs == 10 and pre.num_outputs == 1


def test_shipped_customers_table_has_every_kind_of_dirt(root: str) -> None:
    v = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "customers", root)
    counts, steps = v.manifest["counts"], {s["step"]: s for s in v.manifest["steps"]}
    rules = {(r["_rule"], r["_column"]) for r in v.manifest["quarantine"]["by_rule"]}
    assert {("type", "monthly_charges"), ("range", "age"), ("allowed", "plan"), ("regex", "customer_id")} <= rules
    assert steps["deduplicate"]["exact_duplicates"] > 0 and steps["deduplicate"]["key_duplicates"] > 0
    assert steps["clean"]["filled"]["tenure_months"] > 0 and steps["clean"]["clipped"]["monthly_charges"] > 0
    assert counts["rows_in"] == 3000 and counts["rows_out"] > 2700
    assert v.manifest["classes"] == ["no", "yes"]


def _bad(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


GOOD = b"id,x,n,cat,y\nK1,1.0,2,a,no\nK2,2.0,3,b,yes\n"


@pytest.mark.parametrize("name, data, message", [
    ("quote.csv", GOOD + b'K3,"3.0,4,a,no\nK4,1.0,2,a,no\n', r"unbalanced quote .* \(bad CSV quoting\)"),
    ("latin1.csv", GOOD + "K5,1.0,2,\u00e1,no\n".encode("latin-1"), r"not UTF-8 at byte 51"),
    ("empty.csv", b"", r"file is empty"),
    ("header.csv", b"id,x,n,cat,y\n", r"no data rows"),
    ("ragged.csv", GOOD + b"K6,1.0,2,a,no,extra\n", r"more fields than the header"),
])
def test_malformed_csv_fails_with_a_clear_message_naming_the_file(tmp_path: Path, root: str, name: str,
                                                                  data: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message) as err:
        run_ingest(_bad(tmp_path, name, data), contract(), "bad", root)
    assert name in str(err.value)
    assert not (Path(root) / "bad").exists() or not list((Path(root) / "bad").iterdir())


def test_truncated_parquet_fails_clearly(tmp_path: Path, root: str) -> None:
    table(200).write_parquet(tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    with pytest.raises(SourceError, match=r"trunc.parquet: not a readable Parquet file \(truncated or corrupt\)"):
        run_ingest(_bad(tmp_path, "trunc.parquet", data[: len(data) // 2]), contract(), "bad", root)


def test_missing_files_and_unknown_formats_are_named(tmp_path: Path, root: str) -> None:
    with pytest.raises(SourceError, match="no files match"):
        run_ingest(str(tmp_path / "*.csv"), contract(), "x", root)
    with pytest.raises(SourceError, match="unknown format"):
        run_ingest(_bad(tmp_path, "t.xlsx", b"PK"), contract(), "x", root)
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(SourceError, match="mix formats"):
        run_ingest([write_csv(table(5), tmp_path / "a.csv"), str(tmp_path / "a.parquet")], contract(), "x", root)
