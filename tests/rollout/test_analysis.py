"""Window aggregation and threshold checks: how router windows turn into pass / fail / insufficient."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.contracts import BASELINE, CANDIDATE, VariantWindow
from deployments.rollout.analysis import WindowLog, aggregate, evaluate, quantile, samples
from tests.rollout.helpers import make_spec, windows


def test_aggregate_sums_counts_and_pools_latencies_across_routers():
    ws = [VariantWindow(CANDIDATE, "2", 2, 1, 1, [10.0, 20.0]), VariantWindow(CANDIDATE, "2", 2, 0, 0, [30.0, 40.0])]
    stats = aggregate(ws)[CANDIDATE]
    assert stats.requests == 4 and stats.errors == 1 and stats.error_rate == 0.25
    assert stats.p50_ms == pytest.approx(25.0) and stats.versions == ["2"]


def test_4xx_are_the_clients_fault_and_not_counted_as_errors():
    stats = aggregate([VariantWindow(CANDIDATE, "2", 10, 5, 0, [1.0] * 10)])[CANDIDATE]
    assert stats.error_rate == 0.0


def test_shadow_copies_are_left_out_unless_asked_for():
    ws = [VariantWindow(CANDIDATE, "2", 10, 0, 10, [], shadow=True)]
    assert aggregate(ws) == {}
    assert aggregate(ws, include_shadow=True)[CANDIDATE].errors == 10


def test_quantile_matches_numpy():
    values = list(np.random.default_rng(0).exponential(5, 101))
    assert quantile(values, 0.99) == pytest.approx(np.quantile(values, 0.99))


def test_too_few_candidate_requests_is_insufficient_not_pass():
    verdict = evaluate(make_spec(), aggregate(windows(5)))
    assert verdict.status == "insufficient"


def test_error_rate_above_the_limit_fails_with_a_reason():
    verdict = evaluate(make_spec(), aggregate(windows(50, 10)))
    assert verdict.status == "fail" and "error rate 20.0% (10/50) > 5.0%" in verdict.reasons[0]


def test_healthy_candidate_passes():
    assert evaluate(make_spec(), aggregate(windows(50, 1))).status == "pass"


def test_absolute_p99_limit():
    spec = make_spec(thresholds={"max_error_rate": None, "max_p99_ms": 50})
    assert evaluate(spec, aggregate(windows(50, cand_latency=80))).status == "fail"
    assert evaluate(spec, aggregate(windows(50, cand_latency=20))).status == "pass"


def test_p99_relative_to_baseline():
    spec = make_spec(thresholds={"max_p99_ratio_vs_baseline": 1.5})
    assert evaluate(spec, aggregate(windows(50, cand_latency=40, base_latency=20))).status == "fail"
    assert evaluate(spec, aggregate(windows(50, cand_latency=25, base_latency=20))).status == "pass"


def test_model_metric_bounds():
    spec = make_spec(thresholds={"model_metrics": {"confidence": {"min": 0.6}}})
    low = [VariantWindow(CANDIDATE, "2", 20, 0, 0, [1.0] * 20, {"confidence": [0.5] * 20})]
    ok = [VariantWindow(CANDIDATE, "2", 20, 0, 0, [1.0] * 20, {"confidence": [0.8] * 20})]
    assert evaluate(spec, aggregate(low)).status == "fail"
    assert evaluate(spec, aggregate(ok)).status == "pass"


def test_samples_expand_success_counts_and_skip_shadow_copies():
    ws = [VariantWindow(BASELINE, "1", 3, 0, 1, [5.0, 6.0, 7.0]),
          VariantWindow(BASELINE, "1", 9, 0, 9, [], shadow=True)]
    assert sorted(samples(ws, BASELINE, "success")) == [0.0, 1.0, 1.0]
    assert samples(ws, BASELINE, "latency_ms") == [5.0, 6.0, 7.0]


def test_window_log_selects_by_arrival_time_and_counts_step_requests():
    log = WindowLog()
    log.add(1.0, "r1", windows(10))
    log.add(2.0, "r1", windows(7))
    assert log.requests_since(1.5, CANDIDATE) == 7 and len(log.since(0.0)) == 4


def test_traffic_is_settled_only_when_every_recent_router_reported_no_candidate_requests_after_the_change():
    log = WindowLog()
    log.add(1.0, "r1", windows(10))
    log.add(1.0, "r2", windows(10))
    log.add(2.0, "r1", [VariantWindow(BASELINE, "1", 5)])
    assert not log.routers_quiet_on(CANDIDATE, after=1.5, active_within_s=5, now=2.0)
    log.add(2.1, "r2", [VariantWindow(BASELINE, "1", 5)])
    assert log.routers_quiet_on(CANDIDATE, after=1.5, active_within_s=5, now=2.1)
