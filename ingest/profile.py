"""Statistics of a written version: column stats, normalisation, and the drift profile.

One query over the version's Parquet computes everything the manifest records about the
data: per-column min/max/mean/std/nulls, the train split's mean/std per numeric feature
(stored, never applied), and each feature's distribution (decile edges + fractions, or
category frequencies) that the next version's drift check compares against. When a
reference profile is given, the new data is also binned on the reference's edges in the
same pass, which is what PSI needs.
"""

from __future__ import annotations

import itertools
from typing import Any

import polars as pl

from ingest.cleaning import SPLIT, TRAIN, Plan
from ingest.contract import Contract


def _bins(x: pl.Expr, edges: list[float], prefix: str) -> list[pl.Expr]:
    """Fraction of non-null values in each of len(edges)+1 bins (−inf, e0], (e0, e1], …, (e_n, inf)."""
    bounds = [float("-inf"), *edges, float("inf")]
    valid = x.is_not_null().sum()
    return [(((x > lo) & (x <= hi)).sum() / valid).alias(f"{prefix}{i}")
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]


def _distributions(contract: Contract, features: list[dict[str, Any]], classes: list[str]) -> dict[str, dict]:
    """What each profiled column looks like: numeric, onehot (columns), label/target (index)."""
    out: dict[str, dict] = {}
    for feat in features:
        if feat["kind"] == "numeric":
            out[feat["name"]] = {"kind": "numeric"}
        else:
            out[feat["name"]] = {"kind": "categorical", "encoding": feat["encoding"],
                                 "vocabulary": feat["vocabulary"], "columns": feat["columns"]}
    if contract.task == "classification":
        out[contract.target] = {"kind": "categorical", "encoding": "label", "vocabulary": classes,
                                "columns": [contract.target]}
    else:
        out[contract.target] = {"kind": "numeric"}
    return out


def profile(lf: pl.LazyFrame, contract: Contract, features: list[dict[str, Any]], plan: Plan,
            reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Column stats, normalisation (train split) and distributions; binned on ``reference`` too."""
    schema = lf.collect_schema()
    data_cols = [c for c in schema.names() if c != SPLIT and schema[c].is_numeric()]
    dists = _distributions(contract, features, plan.classes)
    numeric = [n for n, d in dists.items() if d["kind"] == "numeric"]
    numeric_features = [f["name"] for f in features if f["kind"] == "numeric"]
    train = pl.col(SPLIT) == TRAIN
    aggs: list[pl.Expr] = [pl.len().alias("__rows")]
    for c in data_cols:
        x = pl.col(c)
        aggs += [x.min().cast(pl.Float64).alias(f"{c}::min"), x.max().cast(pl.Float64).alias(f"{c}::max"),
                 x.cast(pl.Float64).mean().alias(f"{c}::mean"), x.cast(pl.Float64).std().alias(f"{c}::std"),
                 x.null_count().alias(f"{c}::nulls")]
    for c in numeric_features:
        aggs += [pl.col(c).filter(train).mean().alias(f"{c}::train_mean"),
                 pl.col(c).filter(train).std().alias(f"{c}::train_std")]
    deciles = [i / contract.drift.bins for i in range(1, contract.drift.bins)]
    for c in numeric:
        aggs += [pl.col(c).quantile(q).alias(f"{c}::q{i}") for i, q in enumerate(deciles)]
    ref_dists = (reference or {}).get("distributions", {})
    for c in numeric:
        ref = ref_dists.get(c)
        if ref and ref.get("kind") == "numeric":
            aggs += _bins(pl.col(c), ref["edges"], f"{c}::ref")
    stats_row = lf.select(aggs).collect(engine="streaming").row(0, named=True)
    counts = _category_counts(lf, dists)
    edges = {c: sorted({float(stats_row[f"{c}::q{i}"]) for i in range(len(deciles))
                        if stats_row[f"{c}::q{i}"] is not None}) for c in numeric}
    bins = [e for c in numeric for e in _bins(pl.col(c), edges[c], f"{c}::bin")]
    own_bins = lf.select(bins).collect(engine="streaming").row(0, named=True) if numeric else {}
    rows = int(stats_row["__rows"])
    distributions: dict[str, Any] = {}
    reference_bins: dict[str, list[float]] = {}
    for name, d in dists.items():
        if d["kind"] == "numeric":
            distributions[name] = {"kind": "numeric", "edges": edges[name],
                                   "fractions": [_f(own_bins[f"{name}::bin{i}"]) for i in range(len(edges[name]) + 1)]}
            ref = ref_dists.get(name)
            if ref and ref.get("kind") == "numeric":
                reference_bins[name] = [_f(stats_row[f"{name}::ref{i}"]) for i in range(len(ref["edges"]) + 1)]
        else:
            distributions[name] = {"kind": "categorical", "frequencies": counts[name]}
        distributions[name]["null_rate"] = plan.null_counts.get(name, 0) / plan.rows if plan.rows else 0.0
    return {
        "rows": rows,
        "column_stats": {c: {k: _f(stats_row[f"{c}::{k}"]) for k in ("min", "max", "mean", "std")}
                         | {"nulls": int(stats_row[f"{c}::nulls"])} for c in data_cols},
        "normalization": {c: {"mean": _f(stats_row[f"{c}::train_mean"]),
                              "std": _f(stats_row[f"{c}::train_std"]) or 1.0} for c in numeric_features},
        "distributions": distributions,
        "reference_bins": reference_bins,
    }


def _category_counts(lf: pl.LazyFrame, dists: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Category → fraction for one-hot groups (column means) and label indexes (value counts)."""
    out: dict[str, dict[str, float]] = {}
    onehot = {n: d for n, d in dists.items() if d["kind"] == "categorical" and d["encoding"] == "onehot"}
    if onehot:
        row = lf.select([pl.col(col).mean().alias(col) for d in onehot.values() for col in d["columns"]]) \
            .collect(engine="streaming").row(0, named=True)
        for name, d in onehot.items():
            out[name] = {v: _f(row[col]) for v, col in zip(d["vocabulary"], d["columns"], strict=True)}
    labels = [n for n, d in dists.items() if d["kind"] == "categorical" and d["encoding"] == "label"]
    queries = [lf.group_by(n).len() for n in labels]
    for name, frame in zip(labels, pl.collect_all(queries, engine="streaming") if queries else [], strict=True):
        total = frame["len"].sum() or 1
        vocab = dists[name]["vocabulary"]
        by_index = dict(zip(frame[name].to_list(), frame["len"].to_list(), strict=True))
        out[name] = {v: by_index.get(i, 0) / total for i, v in enumerate(vocab)}
    return out


def _f(value: Any) -> float | None:
    return None if value is None else float(value)
