"""Quarantine: every rejected row, with its raw values, the step, rule, column and reason.

All quarantine parts share one schema (raw values as text), so the quarantine of a version is
one ``scan_parquet`` away and nothing the contract rejected is ever lost.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ingest.contract import Contract
from ingest.rules import CHECK, COLUMN, RAW_PREFIX, REASON, ROW, RULE, describe
from ingest.sources import SOURCE_COLUMN
from ingest.text_contract import TextContract

STEP = "_step"
DIR = "quarantine"


def columns(contract: Contract) -> list[str]:
    return [ROW, SOURCE_COLUMN, *contract.names, STEP, RULE, COLUMN, REASON]


def from_validation(lf: pl.LazyFrame, contract: Contract) -> pl.LazyFrame:
    """Rows the contract rules rejected, with their raw text (what the file really said)."""
    return describe(lf.filter(pl.col(CHECK).is_not_null()), contract).select(
        pl.col(ROW).cast(pl.Int64), pl.col(SOURCE_COLUMN).cast(pl.String),
        *[pl.col(RAW_PREFIX + n).alias(n) for n in contract.names],
        pl.lit("contract").alias(STEP), pl.col(RULE), pl.col(COLUMN), pl.col(REASON))


def from_typed(df: pl.DataFrame, contract: Contract | TextContract, step: str, rule: str | pl.Expr,
               column: str | pl.Expr, reason: pl.Expr) -> pl.DataFrame:
    """Rows rejected after casting (duplicate keys, outliers, text rules): values back to text."""
    rule, column = (v if isinstance(v, pl.Expr) else pl.lit(v) for v in (rule, column))
    return df.select(
        pl.col(ROW).cast(pl.Int64), pl.col(SOURCE_COLUMN).cast(pl.String),
        *[pl.col(n).cast(pl.String) for n in contract.names],
        pl.lit(step).alias(STEP), rule.alias(RULE), column.alias(COLUMN), reason.alias(REASON))


def write(df: pl.DataFrame, directory: Path, name: str) -> None:
    if df.height:
        directory.mkdir(parents=True, exist_ok=True)
        df.write_parquet(directory / f"{name}.parquet", compression="zstd")


def prune(directory: Path) -> None:
    """Drop empty parts (and the folder when nothing was quarantined)."""
    for part in directory.glob("*.parquet"):
        if pl.scan_parquet(part).select(pl.len()).collect().item() == 0:
            part.unlink()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def summary(directory: Path) -> dict[str, object]:
    """Rows and counts by (step, rule, column) for the manifest."""
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return {"rows": 0, "by_rule": []}
    counts = (pl.scan_parquet(files).group_by(STEP, RULE, COLUMN).agg(pl.len().alias("rows"))
              .sort("rows", STEP, RULE, COLUMN, descending=[True, False, False, False]).collect())
    return {"rows": int(counts["rows"].sum()), "path": DIR, "by_rule": counts.to_dicts()}
