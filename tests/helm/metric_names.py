"""Metric names: those the chart's alerts and dashboards query, and those the code registers.

`referenced_metric_names(rendered_docs)` is the one extractor of PromQL metric names from
rendered manifests (PrometheusRule `expr`s, Grafana dashboard ConfigMaps' target `expr`s and
`label_values(...)` template queries). The chart tests compare it with the code; the same
function serves a check against a live Prometheus scrape.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cluster.metrics import exported_name

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("cluster", "deployments", "train", "ingest", "models", "jobs")
METRIC_KINDS = ("counter", "gauge", "histogram")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
RAY_DASHBOARDS = "dashboard/modules/metrics/dashboards"  # inside the installed ray package

# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def metric_names_in_expr(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords and numbers dropped)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def _dashboard_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # rows nest panels

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and isinstance(query, str):
            yield from _LABEL_VALUES.findall(query)


# Series the alerts take from other exporters than Ray's and MLflow's, each checked by hand:
# the KubeRay operator (ray-operator/controllers/ray/metrics/ray_job_metrics.go at v1.7.0) and
# kube-state-metrics (which kube-prometheus-stack ships).
EXTERNAL_EXPORTERS = {"kuberay_job_deployment_status", "kube_pod_status_phase", "kube_pod_container_resource_requests"}


def _ours(doc: dict[str, Any]) -> bool:
    """Ray's stock dashboards are Ray's own business (tests/helm/test_ray_dashboards.py)."""
    return doc.get("metadata", {}).get("labels", {}).get("rayline.io/dashboard-source") != "ray"


def queries(rendered_docs: Iterable[dict[str, Any]]) -> list[str]:
    """Every PromQL query in the rendered alert rules and the chart's own Grafana dashboards."""
    found: list[str] = []
    for doc in rendered_docs:
        if doc.get("kind") == "PrometheusRule":
            found += [rule["expr"] for group in doc["spec"]["groups"] for rule in group["rules"]]
        elif doc.get("kind") == "ConfigMap" and _ours(doc):
            for key, body in (doc.get("data") or {}).items():
                if key.endswith(".json"):
                    found += list(_dashboard_queries(json.loads(body)))
    return found


def referenced_metric_names(rendered_docs: Iterable[dict[str, Any]]) -> set[str]:
    """Metric names (as Prometheus stores them) that the chart's alerts and dashboards query from
    Ray's and MLflow's endpoints (names from EXTERNAL_EXPORTERS left out)."""
    return {name for query in queries(rendered_docs) for name in metric_names_in_expr(query)} - EXTERNAL_EXPORTERS


def registered_metrics(root: Path = ROOT) -> dict[str, str]:
    """{name as registered: kind} for every `metrics.counter/gauge/histogram("name", ...)` in the code."""
    found: dict[str, str] = {}
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in METRIC_KINDS
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "metrics"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    found[node.args[0].value] = node.func.attr
    return found


def exported_series_names(registered: dict[str, str]) -> set[str]:
    """The names Prometheus scrapes from Ray's metrics port for the registered metrics.

    Ray prefixes `ray_`; counters end in `_total` (Ray adds it when missing); histograms
    are exposed as `_bucket`, `_sum` and `_count` series.
    """
    names: set[str] = set()
    for name, kind in registered.items():
        full = exported_name(name)
        if kind == "counter":
            names.add(full if full.endswith("_total") else full + "_total")
        elif kind == "histogram":
            names |= {full + suffix for suffix in HISTOGRAM_SUFFIXES}
        else:
            names.add(full)
    return names


def ray_dashboard_metric_names() -> set[str]:
    """`ray_*` names the installed Ray's own bundled Grafana panels query: names Ray itself exports."""
    spec = importlib.util.find_spec("ray")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    names: set[str] = set()
    for path in (Path(spec.submodule_search_locations[0]) / RAY_DASHBOARDS).glob("*.py"):
        names |= set(re.findall(r"\bray_[a-z0-9_]+", path.read_text()))
    return names
