"""Drift between a new version and its parent: PSI per feature and null-rate change.

PSI = Σ (a − e) · ln(a / e) over bins (numeric: the parent's decile edges; categorical: the
vocabulary), with fractions floored at 1e-4 so empty bins stay finite. The usual reading:
< 0.1 stable, 0.1–0.25 moderate, > 0.25 large. Thresholds and warn/fail come from the contract.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ingest.contract import DriftSpec
from ingest.errors import DriftError

log = logging.getLogger(__name__)
FLOOR = 1e-4


def psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e or 0.0, FLOOR), max(a or 0.0, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def compare(reference: dict[str, Any] | None, new: dict[str, Any], spec: DriftSpec,
            parent: str | None) -> dict[str, Any]:
    """Drift figures for the manifest; ``breached`` lists the columns over a threshold."""
    if not reference:
        return {"parent": None, "compared": False, "breached": [], "columns": {}}
    columns: dict[str, Any] = {}
    breached: list[str] = []
    for name, dist in new["distributions"].items():
        ref = reference.get("distributions", {}).get(name)
        if ref is None or ref.get("kind") != dist["kind"]:
            continue
        if dist["kind"] == "numeric":
            actual = new["reference_bins"].get(name)
            value = psi(ref["fractions"], actual) if actual is not None else None
        else:
            cats = sorted(set(ref["frequencies"]) | set(dist["frequencies"]))
            value = psi([ref["frequencies"].get(c, 0.0) for c in cats], [dist["frequencies"].get(c, 0.0) for c in cats])
        null_change = abs(dist.get("null_rate", 0.0) - ref.get("null_rate", 0.0))
        over = (value is not None and value > spec.psi_threshold) or null_change > spec.null_rate_threshold
        columns[name] = {"psi": value, "null_rate": dist.get("null_rate", 0.0),
                         "null_rate_parent": ref.get("null_rate", 0.0), "null_rate_change": null_change,
                         "breached": over}
        if over:
            breached.append(name)
    return {"parent": parent, "compared": True, "psi_threshold": spec.psi_threshold,
            "null_rate_threshold": spec.null_rate_threshold, "action": spec.action,
            "breached": breached, "columns": columns}


def enforce(report: dict[str, Any], dataset: str) -> None:
    """Warn or fail (as the contract says) when any column breached a threshold."""
    if not report.get("breached"):
        return
    detail = ", ".join(f"{c} (psi={_fmt(report['columns'][c]['psi'])}, "
                       f"null-rate change={report['columns'][c]['null_rate_change']:.3f})" for c in report["breached"])
    message = f"dataset {dataset}: drift against {report['parent']} above threshold in {detail}"
    if report.get("action") == "fail":
        raise DriftError(message + "; not published (drift.action: fail)")
    log.warning(message, extra={"dataset": dataset, "drift_columns": report["breached"]})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
