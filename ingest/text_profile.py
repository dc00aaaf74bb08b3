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
    chars = texts.str.len_chars().cast(pl.Float64).to_numpy()
    qs = [i / spec.drift.bins for i in range(1, spec.drift.bins)]
    edges = sorted({float(v) for v in np.quantile(chars, qs)}) if chars.size else []
    distributions: dict[str, Any] = {
        "chars": {"kind": "numeric", "edges": edges, "null_rate": 0.0,
                  "fractions": fractions(list(bin_counts(chars, edges, "").values())),
                  "mean": float(chars.mean()) if chars.size else 0.0,
                  "max": float(chars.max()) if chars.size else 0.0},
    }
    parent = (reference or {}).get("distributions", {})
    words = (texts.str.to_lowercase().str.extract_all(WORD).explode().drop_nulls()
             .value_counts(sort=True, name="n"))
    total = int(words["n"].sum()) if words.height else 0
    top = words.head(spec.vocabulary_size)
    keep = set(top[words.columns[0]].to_list()) | (set(parent.get("vocabulary", {}).get("frequencies", {})) - {OTHER})
    chosen = words.filter(pl.col(words.columns[0]).is_in(sorted(keep)))
    frequencies = {w: n / total for w, n in chosen.iter_rows()} if total else {}
    frequencies[OTHER] = max(0.0, 1.0 - sum(frequencies.values()))
    distributions["vocabulary"] = {"kind": "categorical", "null_rate": 0.0, "words": total,
                                   "frequencies": dict(sorted(frequencies.items()))}
    reference_bins = {}
    if "chars" in parent:
        reference_bins["chars"] = fractions(list(bin_counts(chars, parent["chars"]["edges"], "").values()))
    return {"distributions": distributions, "reference_bins": reference_bins}
