"""Null markers: the texts a contract says mean "missing" (R's NA, N/A, null) are nulls, not cast errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ingest.contract import load_contract
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract, table

MARKERS = ["", "NA", "N/A", None]  # YAML's bare null is the word 'null'


def _with_markers(rows: int, path: Path) -> str:
    """A CSV as R's write.csv leaves it: every 5th x and every 7th n missing as NA / N/A / null."""
    df = table(rows).with_columns(pl.col("x").cast(pl.String), pl.col("n").cast(pl.String))
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.lit("NA")).otherwise(pl.col("x")).alias("x"),
        pl.when(pl.int_range(pl.len()) % 14 == 0).then(pl.lit("N/A"))
        .when(pl.int_range(pl.len()) % 14 == 7).then(pl.lit(" null ")).otherwise(pl.col("n")).alias("n"))
    df.write_csv(path)
    return str(path)


def test_na_in_a_nullable_column_is_filled_not_a_cast_error(tmp_path: Path, root: str) -> None:
    """20 % NA in x is far above cast_error_tolerance (5 %): with markers named it is a fill, not a failure."""
    spec = contract(null_values=MARKERS, column_patches={"x": {"nullable": True, "fill": "median"},
                                                         "n": {"nullable": True, "fill": {"constant": 0}}})
    v = run_ingest(_with_markers(500, tmp_path / "na.csv"), spec, "na", root)
    clean = next(s for s in v.manifest["steps"] if s["step"] == "clean")
    assert clean["filled"] == {"x": 100, "n": 72}
    assert v.manifest["counts"]["rows_quarantined"] == 0 and v.manifest["counts"]["rows_out"] == 500


def test_na_in_a_not_nullable_column_is_quarantined_as_null(tmp_path: Path, root: str) -> None:
    spec = contract(null_values=MARKERS, cast_error_tolerance=0.5)
    v = run_ingest(_with_markers(140, tmp_path / "nn.csv"), spec, "nn", root)
    q = v.quarantine().collect()
    assert set(q["_rule"]) == {"null"}  # never "type"
    first = q.filter(pl.col("_row") == 0).row(0, named=True)
    assert (first["x"], first["_column"], first["_reason"]) == (
        "NA", "x", "x is null but the contract says nullable: false")  # the raw text is kept for the record


def test_a_column_can_name_its_own_markers(tmp_path: Path, root: str) -> None:
    """x reads only NA as missing; n keeps the file-wide markers, which do not include N/A here."""
    spec = contract(null_values=["", "null"], cast_error_tolerance=0.5,
                    column_patches={"x": {"null_values": ["NA"], "fill": "mean", "nullable": True},
                                    "n": {"nullable": True, "fill": {"constant": 0}}})
    v = run_ingest(_with_markers(140, tmp_path / "col.csv"), spec, "col", root)
    q = v.quarantine().collect()
    assert q.group_by("_rule", "_column").len().sort("_column").rows() == [("type", "n", 10)]  # the N/A rows
    assert set(q["n"]) == {"N/A"}


def test_markers_are_part_of_the_digest_only_when_set() -> None:
    plain = load_contract(contract())
    assert plain.null_values == ("",)
    assert load_contract(contract(null_values=[""])).digest() == plain.digest()
    assert load_contract(contract(null_values=MARKERS)).digest() != plain.digest()
    assert load_contract(contract(null_values=MARKERS)).null_values == ("", "NA", "N/A", "null")
