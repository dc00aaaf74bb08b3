"""The contract fails a run before anything is published, naming the column and the values."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ingest.catalog import Catalog
from ingest.contract import load_contract
from ingest.errors import ContractError, DatasetNotFound
from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, contract, table, write_csv


def test_shipped_contract_loads_with_key_target_and_features() -> None:
    spec = load_contract(CUSTOMERS_CONTRACT)
    assert spec.key == "customer_id" and spec.target == "churned"
    assert [c.name for c in spec.features] == ["age", "tenure_months", "monthly_charges", "plan", "region"]
    assert spec.digest().startswith("sha256:")


def test_missing_required_column_fails_naming_it_and_writes_nothing(tmp_path: Path, root: str) -> None:
    src = write_csv(table(50).drop("cat"), tmp_path / "m.csv")
    with pytest.raises(ContractError, match=r"missing required column\(s\) \['cat'\]"):
        run_ingest(src, contract(), "m", root)
    with pytest.raises(DatasetNotFound):
        Catalog(root).latest("m")
    directory = Path(root) / "m"
    assert not directory.exists() or not list(directory.iterdir())  # not even a staging directory left


def test_uncastable_column_fails_naming_column_and_offending_values(tmp_path: Path, root: str) -> None:
    df = table(100).with_columns(pl.when(pl.col("n") % 2 == 0).then(pl.lit("lots")).otherwise(pl.lit("a few"))
                                 .alias("n"))
    with pytest.raises(ContractError) as err:
        run_ingest(write_csv(df, tmp_path / "t.csv"), contract(), "t", root)
    message = str(err.value)
    assert "column 'n'" in message and "cannot be cast to int" in message
    assert "'a few'" in message and "'lots'" in message
    assert not (Path(root) / "t").exists() or not list((Path(root) / "t").iterdir())


def test_a_few_uncastable_values_are_quarantined_not_fatal(tmp_path: Path, root: str) -> None:
    df = table(200).with_columns(pl.col("x").cast(pl.String))
    df = df.with_columns(pl.when(pl.col("id") == "K3").then(pl.lit("12,5")).otherwise(pl.col("x")).alias("x"))
    v = run_ingest(write_csv(df, tmp_path / "few.csv"), contract(), "few", root)
    q = v.quarantine().collect()
    assert q.select("id", "x", "_rule", "_column").row(0) == ("K3", "12,5", "type", "x")
    assert q["_reason"].item() == "x=12,5 is not a valid float"


@pytest.mark.parametrize("patch, rule, reason", [
    ({"x": 250.0}, "range", "x=250.0 outside [-100, 100]"),
    ({"cat": "d"}, "allowed", "cat=d not in ['a', 'b', 'c']"),
    ({"id": "bad-key"}, "regex", r"id=bad-key does not match ^K\d+$"),
    ({"y": None}, "null", "y is null but the contract says nullable: false"),
])
def test_each_rule_quarantines_with_rule_column_and_reason(tmp_path: Path, root: str, patch: dict, rule: str,
                                                           reason: str) -> None:
    df = table(50)
    bad = df.head(1).with_columns(pl.lit(v).cast(df.schema[k]).alias(k) for k, v in patch.items())
    v = run_ingest(write_csv(pl.concat([df.slice(1), bad]), tmp_path / "r.csv"), contract(), "r", root)
    q = v.quarantine().collect()
    assert q.height == 1
    assert (q["_rule"].item(), q["_column"].item(), q["_reason"].item()) == (rule, next(iter(patch)), reason)
    assert q["_row"].item() == 49 and q["_source"].item().endswith("r.csv")


@pytest.mark.parametrize("body, fragment", [
    ({"target": "nope"}, "target 'nope' is not a listed column"),
    ({"column_patches": {"x": {"type": "decimal"}}}, "columns[x].type"),
    ({"column_patches": {"cat": {"encoding": None}}}, "needs an encoding"),
    ({"column_patches": {"x": {"nullable": True}}}, "must be nullable: false or have a fill"),
    ({"column_patches": {"id": {"regex": "(["}}}, "does not compile"),
])
def test_invalid_contracts_are_rejected_naming_the_field(body: dict, fragment: str) -> None:
    with pytest.raises(ContractError) as err:
        load_contract(contract(**body))
    assert fragment in str(err.value)


def test_contract_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        load_contract(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("columns: [\n")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(tmp_path / "bad.yaml")
