"""What a text version looks like, in the shape :mod:`ingest.drift` compares.

Two distributions: ``chars`` (document length in characters: decile edges and fractions, and
the fractions on the parent's edges, so PSI compares like with like) and ``vocabulary`` (the
frequencies of the contract's ``vocabulary_size`` most frequent lower-cased words, plus the
parent's words, plus ``<other>`` for the rest). Drift then flags a corpus whose documents grew
or shrank, or whose words changed, with the same thresholds and warn/fail as tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from ingest.profile import bin_counts, fractions
from ingest.text_contract import TextContract

OTHER = "<other>"
WORD = r"\w+"


def profile(texts: pl.Series, spec: TextContract, reference: dict[str, Any] | None) -> dict[str, Any]:
    """The version's distributions (and, with a parent, its length fractions on the parent's edges)."""
    parent = (reference or {}).get("distributions", {})
    chars = texts.str.len_chars().cast(pl.Float64).to_numpy()
    words = (texts.str.to_lowercase().str.extract_all(WORD).explode().drop_nulls()
             .value_counts(sort=True, name="n"))
    counts = dict(zip(words[words.columns[0]].to_list(), words["n"].to_list(), strict=True))
    return distributions({"chars": chars}, {"vocabulary": counts}, spec.drift.bins, spec.vocabulary_size, parent)


def distributions(numeric: dict[str, np.ndarray], categorical: dict[str, dict[str, int]], bins: int, top: int,
                  parent: dict[str, Any]) -> dict[str, Any]:
    """Numeric values as decile edges + fractions (and fractions on the parent's edges); counts as the
    frequencies of the ``top`` most common values plus the parent's, the rest as ``<other>``."""
    out: dict[str, Any] = {}
    reference_bins: dict[str, list[float]] = {}
    qs = [i / bins for i in range(1, bins)]
    for name, values in numeric.items():
        edges = sorted({float(v) for v in np.quantile(values, qs)}) if values.size else []
        out[name] = {"kind": "numeric", "edges": edges, "null_rate": 0.0,
                     "fractions": fractions(list(bin_counts(values, edges, "").values())),
                     "mean": float(values.mean()) if values.size else 0.0,
                     "max": float(values.max()) if values.size else 0.0}
        if name in parent and parent[name].get("kind") == "numeric":
            reference_bins[name] = fractions(list(bin_counts(values, parent[name]["edges"], "").values()))
    for name, counts in categorical.items():
        total = sum(counts.values())
        ranked = sorted(counts, key=lambda k: (-counts[k], k))[:top]
        keep = set(ranked) | (set(parent.get(name, {}).get("frequencies", {})) - {OTHER})
        freqs = {k: counts.get(k, 0) / total for k in keep} if total else {}
        freqs[OTHER] = max(0.0, 1.0 - sum(freqs.values()))
        out[name] = {"kind": "categorical", "null_rate": 0.0, "total": total,
                     "frequencies": dict(sorted(freqs.items()))}
    return {"distributions": out, "reference_bins": reference_bins}
