"""A real Prometheus scrapes Ray's metrics port during a real canary rollout and answers what the dashboards ask.

Real parts only: the session's Ray (our metrics reach Prometheus through Ray's exporter, as the
Helm chart's PodMonitors scrape them), a Serve app with router + rollout controller + two
registered model versions, open-loop load from ``cluster.loadgen``, the Debian ``prometheus``
binary and the chart rendered by the real ``helm``. Ray exports worker metrics every 10 s
(``metrics_report_interval_ms``), so every read polls instead of sleeping.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cluster.loadgen import BackgroundLoad, LoadResult
from cluster.metrics import LATENCY_BUCKETS, exported_name
from deployments.contracts import BASELINE, CANDIDATE
from tests.faults.figures import record
from tests.helm.conftest import EXAMPLES, parse_manifest, run_helm, template_args
from tests.helm.metric_names import referenced_metric_names
from tests.monitoring.prometheus import PrometheusServer, scraping
from tests.serve.helpers import (
    TERMINAL,
    ServeApp,
    admin_ok,
    instance,
    phase,
    register_test_model,
    running_app,
    spec,
    wait_for,
)

RATE_PER_S = 20.0
SCRAPE_INTERVAL_S = 1.0    # Ray refreshes its export every 10 s; the scrape timeout equals this interval
FRESH = "[1m]"             # reads take each series' last sample: a timed-out scrape (loaded machine) leaves a gap
EXPORT_WAIT_S = 120.0     # Ray's 10 s export period, stretched by a loaded machine
# 25 % for ~12 s and 50 % for ~6 s at 20 req/s: longer than one export period, so a scrape sees a middle step.
ROLLOUT = {"steps": [25, 50, 100], "min_requests": 60, "thresholds": {"max_error_rate": 0.05,
                                                                       "min_requests_per_check": 3}}
REQUESTS = exported_name("serve_requests_total")
LATENCY = exported_name("serve_request_latency_seconds")
WEIGHT = exported_name("rollout_candidate_weight")
PHASE = exported_name("rollout_phase")
# Ray's reporter agent records these only for GPUs it detects (one series per GPU index).
GPU_ONLY = {"ray_node_gpus_available", "ray_node_gpus_utilization", "ray_node_gram_used", "ray_node_gram_available"}


Series = dict[frozenset[tuple[str, str]], float]   # full label set → value


@dataclass
class RolloutRun:
    """What the module's one rollout left behind for the assertions."""

    app: ServeApp
    started: float
    ended: float
    load: LoadResult
    before: Series               # request counters in Prometheus just before the rollout started
    probes: int                  # readiness predicts sent before the load (exported late, they may count too)


@pytest.fixture(scope="module")
def prometheus(ray_metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with scraping(Path(tmp_path_factory.mktemp("prom-rollout")), {"ray": [f"127.0.0.1:{ray_metrics_port}"]},
                  SCRAPE_INTERVAL_S) as server:
        yield server


@pytest.fixture(scope="module")
def rollout(serve_url: str, settings, prometheus: PrometheusServer) -> Iterator[RolloutRun]:
    """A fresh model's canary 25 → 50 → 100 % under 20 req/s, driven to its end."""
    with running_app(serve_url, settings, register_test_model(settings)) as app:
        yield run_rollout(app, prometheus)


def run_rollout(app: ServeApp, prometheus: PrometheusServer) -> RolloutRun:
    """Load first (so baseline counters exist), then the rollout start through the admin API, as ``rayline canary``."""
    probes: list[bool] = []
    wait_for(lambda: probes.append(answers(app)) or probes[-1], timeout_s=EXPORT_WAIT_S, every_s=1.0)
    load = BackgroundLoad(app.url, app.model, [instance(i) for i in range(60)], RATE_PER_S).start()
    try:
        prometheus.wait_for(f'sum({REQUESTS}{{variant="{BASELINE}"}}) > 0', timeout_s=EXPORT_WAIT_S)
        before = series_values(prometheus, REQUESTS)
        started = time.time()
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app, **ROLLOUT), "actor": "ci"})
        wait_for(lambda: phase(app) in TERMINAL, timeout_s=180, every_s=1.0)
        ended = time.time()
    finally:
        result = load.stop()
    return RolloutRun(app, started, ended, result, before, len(probes))


def answers(app: ServeApp) -> bool:
    """One predict answered 200 (replicas still starting on a loaded machine time out or answer 503)."""
    try:
        return app.predict([instance(0)]).status_code == 200
    except httpx.HTTPError:
        return False


def series_values(prometheus: PrometheusServer, promql: str) -> Series:
    """Each scraped series' latest value, keyed by its full label set (Ray adds WorkerId, one per process)."""
    return {frozenset(s["metric"].items()): float(s["value"][1])
            for s in prometheus.query(f"last_over_time({promql}{FRESH})")}


def counted_since(before: Series, after: Series, variant: str) -> float:
    """What ``variant``'s series gained since ``before`` (series of other apps' gone replicas drop out)."""
    return sum(value - before.get(key, 0.0) for key, value in after.items()
               if ("variant", variant) in key and value > before.get(key, 0.0))


def exported_after(prometheus: PrometheusServer, run: RolloutRun) -> Series:
    """The request counters once Ray has exported everything the load saw on the candidate (polls the export)."""
    def caught_up() -> Series | None:
        now = series_values(prometheus, REQUESTS)
        return now if counted_since(run.before, now, CANDIDATE) >= run.load.variants.get(CANDIDATE, 0) else None

    return wait_for(caught_up, timeout_s=EXPORT_WAIT_S, every_s=1.0)


def test_request_counters_of_both_variants_rise_by_what_the_load_was_served(
        rollout: RolloutRun, prometheus: PrometheusServer) -> None:
    """The dashboard's traffic panels read these counters: they must count each variant's requests, exactly."""
    served = rollout.load.variants
    assert phase(rollout.app) == "succeeded", admin_ok(rollout.app, "GET", "/admin/rollout")["rollout"]["reason"]
    after = exported_after(prometheus, rollout)
    candidate = counted_since(rollout.before, after, CANDIDATE)
    baseline = counted_since(rollout.before, after, BASELINE)
    record("monitoring: request counters", load_requests=rollout.load.sent, served_baseline=served[BASELINE],
           served_candidate=served[CANDIDATE], prometheus_candidate=candidate, prometheus_baseline_in_rollout=baseline,
           rollout_s=round(rollout.ended - rollout.started, 1))
    assert candidate == served[CANDIDATE] > 0
    assert 0 < baseline <= served[BASELINE] + rollout.probes


def test_latency_histogram_has_every_bucket_per_variant_and_a_p99(rollout: RolloutRun,
                                                                  prometheus: PrometheusServer) -> None:
    """The p50/p99 panels are histogram_quantile over these buckets: all of them, cumulative, ending at the count."""
    exported_after(prometheus, rollout)
    for variant in (BASELINE, CANDIDATE):
        buckets = prometheus.query(f'sum by (le) (last_over_time({LATENCY}_bucket{{variant="{variant}"}}{FRESH}))')
        counts = sorted((float(b["metric"]["le"]), float(b["value"][1])) for b in buckets)
        assert [le for le, _ in counts] == [*LATENCY_BUCKETS, float("inf")]
        assert all(a <= b for (_, a), (_, b) in itertools.pairwise(counts)), counts
        total = prometheus.query(f'sum(last_over_time({LATENCY}_count{{variant="{variant}"}}{FRESH}))')
        assert counts[-1][1] == float(total[0]["value"][1]) > 0
    p99 = prometheus.query(f"histogram_quantile(0.99, sum by (variant, le) (last_over_time({LATENCY}_bucket{FRESH})))")
    p99_s = {s["metric"]["variant"]: float(s["value"][1]) for s in p99}
    record("monitoring: latency histogram", p99_ms={v: round(x * 1000, 1) for v, x in p99_s.items()})
    assert 0 < p99_s[CANDIDATE] <= LATENCY_BUCKETS[-1]


def test_candidate_weight_climbs_through_the_steps_to_full_traffic(rollout: RolloutRun,
                                                                   prometheus: PrometheusServer) -> None:
    """What a canary panel plots (query_range): only the spec's step weights, rising, ending at 1."""
    model = f'model="{rollout.app.model}"'
    prometheus.wait_for(f"{WEIGHT}{{{model}}} == 1", timeout_s=EXPORT_WAIT_S)
    end = time.time() + 2.0   # the range's last step must fall after the sample just seen
    series = prometheus.query_range(f"{WEIGHT}{{{model}}}", rollout.started - 5, end, step_s=1.0)
    assert len(series) == 1, series
    values = [v for _, v in series[0]["values"]]
    seen = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    progressing = prometheus.query_range(f'{PHASE}{{{model}, phase="progressing"}}', rollout.started - 5, end)
    record("monitoring: rollout weight", weights_seen=seen, samples=len(values),
           export_lag_s=round(end - 2.0 - rollout.ended, 1))
    steps = [s / 100 for s in ROLLOUT["steps"]]
    assert seen == sorted(seen) and set(seen) <= set(steps), seen
    assert seen[-1] == 1.0 and len(seen) >= 2, seen
    assert max(v for _, v in progressing[0]["values"]) == 1.0


def test_the_phase_gauge_ends_on_succeeded(rollout: RolloutRun, prometheus: PrometheusServer) -> None:
    """The dashboard's phase panel and any 'rollout stuck' alert read this gauge after the rollout ended."""
    assert phase(rollout.app) == "succeeded"
    prometheus.wait_for(f'{PHASE}{{model="{rollout.app.model}", phase="succeeded"}} == 1', timeout_s=EXPORT_WAIT_S)


def chart_docs() -> list[dict]:
    """The chart as shipped with monitoring on (production example): dashboards' ConfigMaps and alert rules."""
    result = run_helm(*template_args([EXAMPLES["production"]], [], []))
    assert result.returncode == 0, result.stderr
    return parse_manifest(result.stdout)


def test_every_metric_the_shipped_dashboards_and_alerts_query_is_in_the_live_scrape(
        rollout: RolloutRun, prometheus: PrometheusServer) -> None:
    """A panel on a name nobody exports stays empty forever; GPU names need a GPU (Ray records them per GPU)."""
    import ray

    docs = chart_docs()
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and any(k.endswith(".json") for k in d.get("data", {}))]
    assert dashboards, "no Grafana dashboard rendered"
    referenced = referenced_metric_names(docs)
    exported_after(prometheus, rollout)
    live = prometheus.metric_names()
    # The language-model dashboard's names come from generation replicas, which this tabular rollout does
    # not run: tests/serve/test_llm_openai.py checks them against its own live scrape.
    missing = {name for name in referenced - live if not name.startswith("ray_rayline_llm_")}
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    record("monitoring: dashboard names", referenced=len(referenced), missing=sorted(missing), gpu=has_gpu)
    assert not (missing if has_gpu else missing - GPU_ONLY), f"queried but not scraped: {sorted(missing)}"
