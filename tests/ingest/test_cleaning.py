"""Each cleaning step changes the data as configured and reports how many rows/values it touched."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract, table, write_csv


def _step(version, name: str) -> dict:
    return next(s for s in version.manifest["steps"] if s["step"] == name)


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path, root: str) -> None:
    df = table(500)
    src = write_csv(pl.concat([df, df.head(30), df.head(5)]), tmp_path / "d.csv")
    v = run_ingest(src, contract(), "d", root)
    assert _step(v, "deduplicate")["exact_duplicates"] == 35
    assert v.manifest["counts"]["rows_out"] == 500
    assert v.lazy().select(pl.col("id").n_unique()).collect().item() == 500


@pytest.mark.parametrize("keep, expected_x", [("first", 1.0), ("last", 3.0)])
def test_duplicate_keys_keep_first_or_last_in_source_order(tmp_path: Path, root: str, keep: str,
                                                           expected_x: float) -> None:
    df = pl.concat([table(100), pl.DataFrame({"id": ["K7"] * 3, "x": [1.0, 2.0, 3.0], "n": [1, 2, 3],
                                              "cat": ["a"] * 3, "y": ["no"] * 3})]).filter(
        ~((pl.col("id") == "K7") & (pl.col("n") > 3)))
    src = write_csv(df, tmp_path / "k.csv")
    v = run_ingest(src, contract(deduplicate={"exact": True, "key": keep}), "k", root)
    assert _step(v, "deduplicate")["key_duplicates"] == 2
    assert v.lazy().filter(pl.col("id") == "K7").select("x").collect().item() == expected_x


def test_duplicate_keys_can_be_quarantined_instead(tmp_path: Path, root: str) -> None:
    df = table(100)
    dup = df.head(4).with_columns(pl.col("n") + 1)  # same keys, different values
    v = run_ingest(write_csv(pl.concat([df, dup]), tmp_path / "q.csv"),
                   contract(deduplicate={"key": "quarantine"}), "q", root)
    q = v.quarantine().collect()
    assert _step(v, "deduplicate")["key_quarantined"] == 4
    assert set(q["_rule"]) == {"unique"} and set(q["_column"]) == {"id"}
    assert v.manifest["counts"]["rows_quarantined"] == 4 and v.manifest["counts"]["rows_out"] == 100


def test_fill_strategies_fill_the_documented_values(tmp_path: Path, root: str) -> None:
    df = pl.DataFrame({
        "id": [f"K{i}" for i in range(8)],
        "x": [1.0, None, 3.0, 10.0, None, 2.0, 2.0, 4.0],
        "n": [5, None, 7, None, 9, 9, 9, 1],
        "cat": ["a", "b", None, "b", "c", None, "b", "a"],
        "y": ["no", "yes", "no", "yes", None, "no", "yes", "no"],
    })
    spec = contract(column_patches={"x": {"fill": "median"}, "n": {"fill": "forward"},
                                    "cat": {"fill": "mode"}, "y": {"fill": {"constant": "no"}}})
    v = run_ingest(write_csv(df, tmp_path / "f.csv"), spec, "f", root)
    out = v.lazy().sort("id").collect()
    assert out.filter(pl.col("id") == "K1")["x"].item() == 2.5  # median of 1,3,10,2,2,4
    assert out.filter(pl.col("id") == "K1")["n"].item() == 5.0  # forward fill from K0
    assert out.filter(pl.col("id") == "K3")["n"].item() == 7.0
    assert out.filter(pl.col("id") == "K2")["cat=b"].item() == 1.0  # mode
    assert out.filter(pl.col("id") == "K4")["y"].item() == v.manifest["classes"].index("no")
    assert _step(v, "clean")["filled"] == {"x": 2, "n": 2, "cat": 2, "y": 1}
    assert v.manifest["cleaning"]["fills"]["x"] == 2.5


def test_mean_fill_uses_the_deduplicated_valid_rows(tmp_path: Path, root: str) -> None:
    df = pl.DataFrame({"id": ["K1", "K2", "K2", "K3", "K4"], "x": [1.0, 5.0, 5.0, None, 999.0],
                       "n": [1, 2, 2, 3, 4], "cat": ["a"] * 5, "y": ["no"] * 5})
    v = run_ingest(write_csv(df, tmp_path / "m.csv"), contract(column_patches={"x": {"fill": "mean"}}), "m", root)
    # K2 counted once, K4 quarantined (x > 100): mean(1, 5) = 3
    assert v.lazy().filter(pl.col("id") == "K3").select("x").collect().item() == 3.0


def test_iqr_outliers_are_clipped_and_counted(tmp_path: Path, root: str) -> None:
    df = table(1000).with_columns(pl.when(pl.col("id").is_in(["K1", "K2"])).then(90.0).otherwise(pl.col("x"))
                                  .alias("x"))
    spec = contract(column_patches={"x": {"outliers": {"method": "iqr", "threshold": 3.0, "action": "clip"}}})
    v = run_ingest(write_csv(df, tmp_path / "o.csv"), spec, "o", root)
    lo, hi = v.manifest["cleaning"]["bounds"]["x"]
    out = v.lazy().collect()
    assert _step(v, "clean")["clipped"]["x"] >= 2
    assert out["x"].max() == pytest.approx(hi) and out["x"].min() >= lo
    assert out.height == 1000


def test_zscore_outliers_can_be_quarantined(tmp_path: Path, root: str) -> None:
    df = table(1000).with_columns(pl.when(pl.col("id") == "K5").then(50.0).otherwise(pl.col("x")).alias("x"))
    spec = contract(column_patches={"x": {"outliers": {"method": "zscore", "threshold": 6, "action": "quarantine"}}})
    v = run_ingest(write_csv(df, tmp_path / "z.csv"), spec, "z", root)
    q = v.quarantine().filter(pl.col("_step") == "outliers").collect()
    assert q["id"].to_list() == ["K5"] and q["_rule"].to_list() == ["zscore"]
    assert "outside outlier bounds" in q["_reason"].item()
    assert _step(v, "clean")["outliers_quarantined"] == {"x": 1}


def test_encodings_follow_the_frozen_vocabulary(tmp_path: Path, root: str) -> None:
    df = table(300).filter(pl.col("cat") != "c")  # 'c' absent from data but in the contract
    spec = contract(columns=[*contract()["columns"][:3],
                             {"name": "cat", "type": "str", "nullable": False, "allowed": ["c", "a", "b"],
                              "encoding": "label"},
                             contract()["columns"][4]])
    v = run_ingest(write_csv(df, tmp_path / "e.csv"), spec, "e", root)
    cat = next(f for f in v.manifest["features"] if f["name"] == "cat")
    assert cat["vocabulary"] == ["c", "a", "b"] and cat["columns"] == ["cat"]
    out = v.lazy().collect()
    assert out["cat"].dtype == pl.Int64 and set(out["cat"].unique()) == {1, 2}
    onehot = run_ingest(write_csv(df, tmp_path / "o.csv"), contract(), "o", root)
    assert {"cat=a", "cat=b", "cat=c"} <= set(onehot.lazy().collect_schema().names())
    assert onehot.lazy().select(pl.col("cat=c").sum()).collect().item() == 0


def test_normalisation_is_stored_from_the_train_split_not_applied(tmp_path: Path, root: str) -> None:
    v = run_ingest(write_csv(table(2000, shift=5.0), tmp_path / "n.csv"), contract(), "n", root)
    train = v.lazy("train").collect()
    stats = v.manifest["normalization"]["x"]
    assert stats["mean"] == pytest.approx(train["x"].mean()) and stats["std"] == pytest.approx(train["x"].std())
    assert train["x"].mean() > 4  # stored values are raw, not standardised
    assert set(v.manifest["normalization"]) == {"x", "n"}


def test_split_is_seeded_by_key_and_stable_across_versions(tmp_path: Path, root: str) -> None:
    first = run_ingest(write_csv(table(3000), tmp_path / "a.csv"), contract(), "s", root)
    more = pl.concat([table(3000), table(4000).slice(3000).with_columns(pl.col("x") + 0.01)])
    second = run_ingest(write_csv(more, tmp_path / "b.csv"), contract(), "s", root)
    val1 = set(first.lazy("validation").select("id").collect()["id"])
    val2 = set(second.lazy("validation").select("id").collect()["id"])
    assert val1 == {k for k in val2 if int(k[1:]) < 3000}
    assert 0.15 < len(val1) / 3000 < 0.25
    assert first.manifest["split"]["rows"]["validation"] == len(val1)


def test_the_feature_manifest_carries_the_contract_rules_serving_enforces(tmp_path: Path, root: str) -> None:
    """Range, integer type and clip bounds go with the features, so a model serves what it was trained on."""
    from models.preprocessing import InputError, Preprocessing

    spec = contract(column_patches={"n": {"outliers": {"method": "iqr", "threshold": 1.5, "action": "clip"}}})
    v = run_ingest(write_csv(table(300), tmp_path / "rules.csv"), spec, "rules", root)
    features = {f["name"]: f for f in v.manifest["features"]}
    assert (features["x"]["minimum"], features["x"]["maximum"], features["x"]["integer"]) == (-100, 100, False)
    assert features["n"]["integer"] and features["n"]["clip"] == v.manifest["cleaning"]["bounds"]["n"]
    pre = Preprocessing.from_manifest(v.manifest)
    with pytest.raises(InputError) as err:
        pre.records_to_matrix([{"x": 1e308, "n": 3, "cat": "a"}])
    assert (err.value.field, err.value.rule) == ("x", "range")
