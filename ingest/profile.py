"""Statistics of a version, accumulated bucket by bucket while it is written (no extra pass).

What the manifest records about the data: per-column min/max/mean/std/nulls, the train split's
mean/std per numeric feature (stored, never applied), and each feature's distribution (decile
edges + fractions, or category frequencies) that the next version's drift check compares
against. Everything is a sum over buckets, so it merges exactly, except the decile edges:
they come from the first bucket (a key-hash sample of about 1/buckets of the rows; all rows
when there is one bucket). Fractions are then counted over all rows on those edges, and on the
parent version's edges when there is a parent, which is what PSI needs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from ingest.cleaning import SPLIT, TRAIN, Plan
from ingest.contract import Contract


def bin_counts(values: np.ndarray, edges: list[float], prefix: str) -> dict[str, int]:
    """Counts of values in each of len(edges)+1 bins (−inf, e0], (e0, e1], …, (e_n, inf)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left"),
                         minlength=len(edges) + 1)
    return {f"{prefix}{i}": int(n) for i, n in enumerate(counts)}


def distributions_of(contract: Contract, features: list[dict[str, Any]], classes: list[str]) -> dict[str, dict]:
    """What each profiled column looks like: numeric, one-hot (columns) or label index."""
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


class Profiler:
    """Feed it each written bucket (encoded columns + ``split``); ``result()`` gives the profile."""

    def __init__(self, contract: Contract, features: list[dict[str, Any]], plan: Plan,
                 reference: dict[str, Any] | None = None) -> None:
        self.contract, self.plan = contract, plan
        self.dists = distributions_of(contract, features, plan.classes)
        self.numeric = [n for n, d in self.dists.items() if d["kind"] == "numeric"]
        self.numeric_features = [f["name"] for f in features if f["kind"] == "numeric"]
        self.reference = {n: d for n, d in (reference or {}).get("distributions", {}).items()
                          if n in self.dists and d.get("kind") == "numeric" == self.dists[n]["kind"]}
        self.edges: dict[str, list[float]] | None = None
        self.sums: dict[str, float] = {}
        self.mins: dict[str, float] = {}
        self.maxs: dict[str, float] = {}
        self.columns: list[str] = []

    def add(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        if self.edges is None:
            self._set_edges(df)
        if not self.columns:
            self.columns = [c for c in df.columns if c != SPLIT and df.schema[c].is_numeric()]
        train = pl.col(SPLIT) == TRAIN
        aggs: list[pl.Expr] = [pl.len().alias("rows")]
        for c in self.columns:
            x = pl.col(c).cast(pl.Float64)
            aggs += [x.count().alias(f"{c}:n"), x.sum().alias(f"{c}:s"), (x * x).sum().alias(f"{c}:ss"),
                     x.null_count().alias(f"{c}:nulls")]
        for c in self.numeric_features:
            x = pl.col(c).cast(pl.Float64).filter(train)
            aggs += [x.count().alias(f"{c}:tn"), x.sum().alias(f"{c}:ts"), (x * x).sum().alias(f"{c}:tss")]
        for name, d in self.dists.items():
            if d["kind"] == "categorical" and d["encoding"] == "onehot":
                aggs += [pl.col(col).sum().alias(f"{name}:cat{i}") for i, col in enumerate(d["columns"])]
        row = df.select(aggs).row(0, named=True)
        for c in self.numeric:  # one binary search per value in NumPy instead of a pass per bin
            values = df[c].drop_nulls().cast(pl.Float64).to_numpy()
            row |= bin_counts(values, self.edges[c], f"{c}:bin")
            if c in self.reference:
                row |= bin_counts(values, self.reference[c]["edges"], f"{c}:ref")
        for name, d in self.dists.items():
            if d["kind"] == "categorical" and d["encoding"] != "onehot":
                index = df[name].drop_nulls().to_numpy()
                counts = np.bincount(index[(index >= 0) & (index < len(d["vocabulary"]))],
                                     minlength=len(d["vocabulary"]))
                row |= {f"{name}:cat{i}": int(n) for i, n in enumerate(counts)}
        for key, value in row.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value or 0.0)
        extremes = df.select([pl.col(c).cast(pl.Float64).min().alias(f"{c}:min") for c in self.columns] +
                             [pl.col(c).cast(pl.Float64).max().alias(f"{c}:max") for c in self.columns]).row(
            0, named=True)
        for c in self.columns:
            lo, hi = extremes[f"{c}:min"], extremes[f"{c}:max"]
            if lo is not None:
                self.mins[c] = min(self.mins.get(c, lo), lo)
                self.maxs[c] = max(self.maxs.get(c, hi), hi)

    def _set_edges(self, df: pl.DataFrame) -> None:
        """Decile edges (linear interpolation), one partial sort per column in NumPy."""
        bins = self.contract.drift.bins
        qs = [i / bins for i in range(1, bins)]
        self.edges = {}
        for c in self.numeric:
            values = df[c].drop_nulls().cast(pl.Float64).to_numpy()
            self.edges[c] = sorted({float(v) for v in np.quantile(values, qs)}) if values.size else []

    def result(self) -> dict[str, Any]:
        s = self.sums
        rows = int(s.get("rows", 0))
        column_stats = {}
        for c in self.columns:
            mean, std = _mean_std(s[f"{c}:n"], s[f"{c}:s"], s[f"{c}:ss"])
            column_stats[c] = {"min": self.mins.get(c), "max": self.maxs.get(c), "mean": mean, "std": std,
                               "nulls": int(s[f"{c}:nulls"])}
        normalization = {}
        for c in self.numeric_features:
            mean, std = _mean_std(s[f"{c}:tn"], s[f"{c}:ts"], s[f"{c}:tss"])
            normalization[c] = {"mean": mean, "std": std or 1.0}
        distributions: dict[str, Any] = {}
        reference_bins: dict[str, list[float]] = {}
        for name, d in self.dists.items():
            if d["kind"] == "numeric":
                edges = (self.edges or {}).get(name, [])
                distributions[name] = {"kind": "numeric", "edges": edges,
                                       "fractions": fractions([s.get(f"{name}:bin{i}", 0.0)
                                                                for i in range(len(edges) + 1)])}
                if name in self.reference:
                    n_ref = len(self.reference[name]["edges"]) + 1
                    reference_bins[name] = fractions([s.get(f"{name}:ref{i}", 0.0) for i in range(n_ref)])
            else:
                counts = fractions([s.get(f"{name}:cat{i}", 0.0) for i in range(len(d["vocabulary"]))])
                distributions[name] = {"kind": "categorical", "frequencies": dict(zip(d["vocabulary"], counts,
                                                                                      strict=True))}
            nulls = self.plan.null_counts.get(name, 0)
            distributions[name]["null_rate"] = nulls / self.plan.rows if self.plan.rows else 0.0
        return {"rows": rows, "column_stats": column_stats, "normalization": normalization,
                "distributions": distributions, "reference_bins": reference_bins,
                "edges_from": "first bucket (key-hash sample)"}


def _mean_std(n: float, total: float, squares: float) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(max(var, 0.0))


def fractions(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]
