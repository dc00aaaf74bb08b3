"""Every metric the chart's alerts and dashboards query exists under that name.

Our metrics (`cluster.metrics`, mirrored into Ray's exporter) are scraped from Ray's metrics
port as `ray_rayline_*`: each referenced name must be a series of a metric the code registers
(found by scanning the code for `metrics.counter/gauge/histogram("name", ...)`). Ray's own
names must be ones the installed Ray's bundled dashboards query. Real rendered chart, real code;
no live Prometheus here (the lead checks `referenced_metric_names` against a real scrape).
"""

from __future__ import annotations

import pytest

from cluster import metrics
from tests.helm.conftest import EXAMPLES, Manifest
from tests.helm.metric_names import (
    exported_series_names,
    metric_names_in_expr,
    ray_dashboard_metric_names,
    referenced_metric_names,
    registered_metrics,
)

OURS = "ray_rayline_"
PROMETHEUS_BUILTINS = {"up"}
TEST_METRIC_PREFIX = "test_"  # tests name the metrics they register rayline_test_*
MONITORED = [name for name in EXAMPLES if name != "laptop"]  # laptop turns monitoring off


def test_extractor_keeps_metric_names_and_drops_functions_labels_and_keywords() -> None:
    expr = ('sum by (variant) (rate(a_total{code=~"5..", job="x"}[5m])) / ignoring (variant) group_left '
            'sum(rate(b_total[1m])) > 0.5 and on (pod) histogram_quantile(0.99, rate(c_bucket{le="1"}[5m])) '
            'or up == 0')
    assert metric_names_in_expr(expr) == {"a_total", "b_total", "c_bucket", "up"}


def test_code_scan_finds_the_metrics_the_serving_modules_register() -> None:
    import deployments.window  # noqa: F401  registers its metrics at import

    scanned = registered_metrics()
    for full, metric in metrics._metrics.items():
        name = full.removeprefix(metrics.PREFIX)
        if name.startswith(TEST_METRIC_PREFIX):
            continue  # registered by other tests in this process, not by the product
        assert scanned.get(name) == metric.kind, f"{full} registered at runtime but not found by the scan"
    assert scanned["serve_admin_calls_total"] == "counter"  # registered in Router.__init__


@pytest.mark.parametrize("example", MONITORED)
def test_every_rayline_metric_queried_is_registered_by_the_code(rendered: dict[str, Manifest], example: str) -> None:
    referenced = referenced_metric_names(rendered[example])
    ours = {n for n in referenced if n.startswith(OURS)}
    assert ours, "no ray_rayline_* metric is queried"
    unknown = ours - exported_series_names(registered_metrics())
    assert not unknown, f"queried but never registered (or wrong suffix): {sorted(unknown)}"
    unscraped = {n for n in referenced if n.startswith("rayline_")}
    assert not unscraped, f"scraped from Ray's port these are named ray_<name>: {sorted(unscraped)}"


@pytest.mark.parametrize("example", MONITORED)
def test_every_ray_metric_queried_is_one_ray_exports(rendered: dict[str, Manifest], example: str) -> None:
    referenced = referenced_metric_names(rendered[example]) - PROMETHEUS_BUILTINS
    theirs = {n for n in referenced if not n.startswith(OURS)}
    assert not {n for n in theirs if not n.startswith("ray_")}, f"not a Ray metric: {sorted(theirs)}"
    unknown = theirs - ray_dashboard_metric_names()
    assert not unknown, f"not exported by the installed Ray: {sorted(unknown)}"
