"""Contract rules as Polars expressions: cast each column, then name the first rule a row breaks.

Everything here is an expression over a lazy frame, so validation streams with the scan. A row
that breaks a rule keeps its raw (text) values for the quarantine, plus the rule, the column and
a human reason such as ``age=150 outside [18, 100]``.
"""

from __future__ import annotations

import polars as pl

from ingest.contract import DEFAULT_NULL_VALUES, ColumnSpec, Contract
from ingest.errors import ContractError

ROW = "_row"
RULE = "_rule"
CHECK = "_check"
REASON = "_reason"
COLUMN = "_column"
RAW_PREFIX = "__raw__"
FFILL_PREFIX = "_ffill__"
TRUE_TEXT = ("true", "t", "yes", "y", "1")
FALSE_TEXT = ("false", "f", "no", "n", "0")
DTYPES: dict[str, pl.DataType] = {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String(),
                                  "bool": pl.Boolean(), "date": pl.Date()}


def check_columns(contract: Contract, schema: pl.Schema, where: str) -> None:
    """Fail before anything is written when a required column is missing."""
    missing = [c.name for c in contract.columns if c.required and c.name not in schema]
    if missing:
        present = [n for n in schema.names() if not n.startswith("_")]
        raise ContractError(f"{where}: missing required column(s) {missing}; the source has {present}")


def unmarked(raw: pl.Expr, markers: tuple[str, ...]) -> pl.Expr:
    """``raw`` with the contract's null markers (compared without surrounding blanks) as null."""
    text = raw.cast(pl.String)
    return pl.when(text.str.strip_chars().is_in(list(markers))).then(None).otherwise(raw)


def _typed(col: ColumnSpec, dtype: pl.DataType, markers: tuple[str, ...]) -> pl.Expr:
    raw = pl.col(col.name)
    if dtype == pl.String:
        text = raw.str.strip_chars()
        others = sorted(set(markers) - {""})
        missing = (text == "") | text.is_in(others) if others else text == ""
        text = pl.when(missing).then(None).otherwise(text)
        if col.type == "bool":
            low = text.str.to_lowercase()
            return pl.when(low.is_in(TRUE_TEXT)).then(True).when(low.is_in(FALSE_TEXT)).then(False) \
                .otherwise(None).alias(col.name)
        if col.type == "date":
            return text.str.to_date(strict=False).alias(col.name)
        return text.cast(DTYPES[col.type], strict=False).alias(col.name)
    if set(markers) - {""}:  # a typed source (Parquet, NDJSON) can still hold e.g. -999 as "missing"
        raw = unmarked(raw, markers)
    if col.type == "str":
        return raw.cast(pl.String).alias(col.name)
    return raw.cast(DTYPES[col.type], strict=False).alias(col.name)


def _violations(col: ColumnSpec, typed: pl.Expr, raw_text: pl.Expr) -> list[tuple[pl.Expr, str, pl.Expr]]:
    """(condition, rule, reason) triples for one column, in the order they are checked.

    ``raw_text`` has the null markers already taken out: ``NA`` in a nullable column is a null
    (filled, or quarantined as ``null``), never a value that failed to cast.
    """
    name = col.name
    out: list[tuple[pl.Expr, str, pl.Expr]] = [
        (raw_text.is_not_null() & typed.is_null(), "type",
         say(f"{name}=", raw_text, f" is not a valid {col.type}")),
    ]
    if col.type == "float":
        out.append((typed.is_nan() | typed.is_infinite(), "type", say(f"{name}=", raw_text, " is not finite")))
    if not col.nullable and col.fill is None:
        out.append((typed.is_null(), "null", pl.lit(f"{name} is null but the contract says nullable: false")))
    if col.min is not None or col.max is not None:
        lo = float("-inf") if col.min is None else col.min
        hi = float("inf") if col.max is None else col.max
        out.append(((typed < lo) | (typed > hi), "range",
                    say(f"{name}=", typed, f" outside [{_num(col.min)}, {_num(col.max)}]")))
    if col.allowed is not None:
        shown = list(col.allowed[:10]) + (["…"] if len(col.allowed) > 10 else [])
        out.append((~typed.cast(pl.String).is_in(list(col.allowed)), "allowed",
                    say(f"{name}=", typed, f" not in {shown}")))
    if col.regex is not None:
        out.append((~typed.cast(pl.String).str.contains(col.regex), "regex",
                    say(f"{name}=", typed, f" does not match {col.regex}")))
    return out


def say(prefix: str, value: pl.Expr, suffix: str = "") -> pl.Expr:
    """A reason text around a row's value (literal text is never parsed as a format string)."""
    return pl.concat_str([pl.lit(prefix), value.cast(pl.String).fill_null("null"), pl.lit(suffix)])


def _num(value: float | None) -> str:
    if value is None:
        return "…"
    return str(int(value)) if float(value).is_integer() else str(value)


def checks(contract: Contract) -> list[tuple[pl.Expr, str, str, pl.Expr]]:
    """Every (condition, rule, column, reason) of the contract, in checking order."""
    out = []
    for col in contract.columns:
        markers, raw = contract.null_values_of(col), pl.col(RAW_PREFIX + col.name)
        present = raw if markers == DEFAULT_NULL_VALUES else unmarked(raw, markers)  # default: as the reader reads
        for cond, rule, reason in _violations(col, pl.col(col.name), present):
            out.append((cond, rule, col.name, reason))
    return out


def validate(lf: pl.LazyFrame, contract: Contract, schema: pl.Schema) -> pl.LazyFrame:
    """Raw frame → typed columns, raw text copies, forward-fill flags and ``_check``.

    ``_check`` is the index of the first check a row fails (null when it passes): one small
    integer per row, so reasons are only formatted for the rejected rows (:func:`describe`).
    Forward fill follows the source order and happens here, before any row is dropped; its
    flags let the counts say how many values it filled.
    """
    exprs: list[pl.Expr] = []
    raw_cols: list[pl.Expr] = []
    for col in contract.columns:
        if col.name not in schema:
            lf = lf.with_columns(pl.lit(None, dtype=pl.String).alias(col.name))
            dtype: pl.DataType = pl.String()
        else:
            dtype = schema[col.name]
        typed = _typed(col, dtype, contract.null_values_of(col))
        raw_cols.append(pl.col(col.name).cast(pl.String).alias(RAW_PREFIX + col.name))
        if col.fill is not None and col.fill.method == "forward":
            exprs.append(typed.is_null().alias(FFILL_PREFIX + col.name))
            typed = typed.forward_fill()
        exprs.append(typed.alias(col.name))
    lf = lf.with_columns(raw_cols).with_columns(exprs)
    flagged_ffill = [c.name for c in contract.columns if c.fill is not None and c.fill.method == "forward"]
    if flagged_ffill:  # a flag only counts when forward fill actually found a value
        lf = lf.with_columns([(pl.col(FFILL_PREFIX + n) & pl.col(n).is_not_null()).alias(FFILL_PREFIX + n)
                              for n in flagged_ffill])
    return lf.with_columns(first_failed([c[0] for c in checks(contract)]).alias(CHECK))


def first_failed(conditions: list[pl.Expr]) -> pl.Expr:
    """The index of the first condition that holds (a row's first broken rule), else null."""
    first = pl.lit(None, dtype=pl.Int32)
    for i in reversed(range(len(conditions))):
        first = pl.when(conditions[i].fill_null(False)).then(pl.lit(i, dtype=pl.Int32)).otherwise(first)
    return first


def named_failure(found: list[tuple[pl.Expr, str, str, pl.Expr]]) -> list[pl.Expr]:
    """``_rule``, ``_column`` and ``_reason`` of each row's first failed check (``_check``)."""
    index = list(range(len(found)))
    reason = pl.lit(None, dtype=pl.String)
    for i in reversed(index):
        reason = pl.when(pl.col(CHECK) == i).then(found[i][3]).otherwise(reason)
    return [pl.col(CHECK).replace_strict(index, [c[1] for c in found], return_dtype=pl.String).alias(RULE),
            pl.col(CHECK).replace_strict(index, [c[2] for c in found], return_dtype=pl.String).alias(COLUMN),
            reason.alias(REASON)]


def describe(lf: pl.LazyFrame, contract: Contract) -> pl.LazyFrame:
    """Rule, column and human reason for rows that failed a check (run it on rejected rows only)."""
    return lf.with_columns(named_failure(checks(contract)))
