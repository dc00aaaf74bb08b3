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
    assert evaluate(make_spec(), aggregate(windows(200, 1))).status == "pass"


def test_a_clean_but_small_sample_is_not_yet_evidence_enough_to_advance():
    verdict = evaluate(make_spec(), aggregate(windows(60)))
    assert verdict.status == "insufficient" and "not yet shown below 5.0%" in verdict.checks[-1].reason


def test_absolute_p99_limit():
    spec = make_spec(thresholds={"max_error_rate": None, "max_p99_ms": 50})
    assert evaluate(spec, aggregate(windows(50, cand_latency=80))).status == "fail"
    assert evaluate(spec, aggregate(windows(50, cand_latency=20))).status == "pass"


def test_p99_relative_to_baseline():
    spec = make_spec(thresholds={"max_p99_ratio_vs_baseline": 1.5})
    assert evaluate(spec, aggregate(windows(200, cand_latency=40, base_latency=20))).status == "fail"
    assert evaluate(spec, aggregate(windows(200, cand_latency=25, base_latency=20))).status == "pass"


def test_model_metric_bounds():
    spec = make_spec(thresholds={"model_metrics": {"confidence": {"min": 0.6}}})
    low = [VariantWindow(CANDIDATE, "2", 200, 0, 0, [1.0] * 200, {"confidence": [0.5] * 200})]
    ok = [VariantWindow(CANDIDATE, "2", 200, 0, 0, [1.0] * 200, {"confidence": [0.8] * 200})]
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


def test_a_candidate_is_judged_against_the_baseline_on_the_same_interval_not_on_a_point_estimate():
    spec = make_spec(thresholds={"max_error_rate": 0.05, "min_requests_per_check": 10})
    # 2/20 = 10 % is above 5 %, but 20 requests cannot show it at 95 %: no rollback on noise
    assert evaluate(spec, aggregate(windows(20, 2, base_requests=100, base_errors=2))).status != "fail"
    # 30/100 against a 1 % baseline is a regression by any bound
    verdict = evaluate(spec, aggregate(windows(100, 30, base_requests=300, base_errors=3)))
    assert verdict.status == "fail"
    assert any("on the same interval" in r for r in verdict.reasons)


def test_a_candidate_answering_4xx_to_what_the_baseline_accepts_fails_like_a_5xx():
    spec = make_spec()
    cand = VariantWindow(CANDIDATE, "2", 200, 110, 0, [5.0] * 200)
    base = VariantWindow(BASELINE, "1", 200, 2, 0, [5.0] * 200)
    verdict = evaluate(spec, aggregate([cand, base]))
    assert verdict.status == "fail" and any("client-error (4xx) share 55.0%" in r for r in verdict.reasons)
    same = VariantWindow(CANDIDATE, "2", 200, 4, 0, [5.0] * 200)
    assert evaluate(spec, aggregate([same, base])).status == "pass"   # callers' own mistakes hit both alike


def test_latency_ratio_gate_uses_a_one_sided_test_on_the_same_interval():
    spec = make_spec(thresholds={"max_latency_ratio_vs_baseline": 1.2})
    rng = np.random.default_rng(1)
    base = VariantWindow(BASELINE, "1", 200, 0, 0, list(rng.lognormal(3, 0.3, 200)))
    slow = VariantWindow(CANDIDATE, "2", 200, 0, 0, list(1.5 * rng.lognormal(3, 0.3, 200)))
    same = VariantWindow(CANDIDATE, "2", 200, 0, 0, list(rng.lognormal(3, 0.3, 200)))
    assert evaluate(spec, aggregate([base, slow])).status == "fail"
    assert evaluate(spec, aggregate([base, same])).status == "pass"


def test_router_leases_settle_on_acks_of_live_routers_once_the_change_is_a_lease_old():
    """A controller cannot know every router (another controller may answer polls from the stored state without
    writing): a change settles when the live routers it knows acked it *and* it is a lease old."""
    from deployments.rollout.leases import RouterLeases

    leases = RouterLeases()
    leases.heard("r1", 4, now=100.0)
    leases.heard("r2", 5, now=100.0)
    assert not leases.settled(5, changed_at=99.0, now=100.5, lease_s=3.0)      # r1 still on epoch 4
    leases.heard("r1", 5, now=100.6)
    assert not leases.settled(5, changed_at=99.0, now=100.7, lease_s=3.0)      # acked, but routers it never heard
    assert leases.settled(5, changed_at=99.0, now=103.1, lease_s=3.0)          # ... have failed closed by now
    leases.heard("r3", 4, now=103.0)                                           # a live one on the old split: not yet
    assert not leases.settled(5, changed_at=99.0, now=103.1, lease_s=3.0)
    assert leases.settled(5, changed_at=99.0, now=200.0, lease_s=3.0)            # silent past the lease


def test_a_small_regression_the_interval_cannot_show_fails_on_the_whole_step():
    spec = make_spec()
    interval = aggregate(windows(20, 1, base_requests=180, base_errors=2))
    step = aggregate(windows(400, 24, base_requests=3600, base_errors=36))   # 6 % against 1 %
    assert evaluate(spec, interval).status != "fail"
    verdict = evaluate(spec, interval, step)
    assert verdict.status == "fail" and verdict.reasons[0].startswith("over the step:")


def test_ab_samples_count_users_when_assignment_is_sticky_and_requests_otherwise():
    from deployments.rollout.analysis import samples_per_key

    sticky = [VariantWindow(CANDIDATE, "2", 4, 0, 1, [10.0] * 4, by_key={"u1": [3, 1, 30.0], "u2": [1, 0, 10.0]}),
              VariantWindow(CANDIDATE, "2", 2, 0, 0, [20.0] * 2, by_key={"u1": [2, 0, 40.0]})]
    assert sorted(samples_per_key(sticky, CANDIDATE, "success")) == [0.8, 1.0]   # u1: 1 error in 5; u2: none
    assert sorted(samples_per_key(sticky, CANDIDATE, "latency_ms")) == [10.0, 14.0]
    loose = [VariantWindow(CANDIDATE, "2", 3, 0, 0, [5.0] * 3)]
    assert samples_per_key(loose, CANDIDATE, "success") is None and len(samples(loose, CANDIDATE, "success")) == 3


def test_the_router_recorder_keeps_per_user_sums_for_sticky_requests_only():
    from deployments.window import WindowRecorder

    recorder = WindowRecorder()
    recorder.record(CANDIDATE, "2", 200, 0.010, key="u1")
    recorder.record(CANDIDATE, "2", 500, 0.030, key="u1")
    recorder.record(CANDIDATE, "2", 200, 0.020)
    (window,) = recorder.drain()
    assert window.requests == 3 and window.by_key == {"u1": [2, 1, pytest.approx(40.0)]}
