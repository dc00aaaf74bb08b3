"""Model-metric gates (a language model's ``mean_logprob``): absolute bounds, bounds against the baseline, fail
closed without samples; and how a routed generation's closing metrics item reaches them (``Relay``)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from deployments.contracts import BASELINE, CANDIDATE, VariantWindow
from deployments.llm.relay import MEAN_LOGPROB, Relay, http_response, model_metrics
from deployments.rollout.analysis import aggregate, evaluate
from deployments.rollout.errors import SpecError
from tests.rollout.helpers import make_spec


def lm_windows(cand: list[float], base: list[float]) -> list[VariantWindow]:
    """One window per variant, one request per mean log-prob sample, latencies alike."""
    return [VariantWindow(BASELINE, "1", len(base), 0, 0, [10.0] * len(base), {MEAN_LOGPROB: base}),
            VariantWindow(CANDIDATE, "2", len(cand), 0, 0, [10.0] * len(cand), {MEAN_LOGPROB: cand})]


def gate(**bound: float):
    return make_spec(thresholds={"max_error_rate": 0.05, "min_requests_per_check": 10,
                                 "model_metrics": {MEAN_LOGPROB: bound}})


def spread(mean: float, n: int = 200) -> list[float]:
    return [mean + 0.3 * math.sin(i) for i in range(n)]


def test_a_candidate_below_the_logprob_floor_fails_and_the_reason_names_the_metric():
    verdict = evaluate(gate(min=-3.0), aggregate(lm_windows(spread(-5.0), spread(-1.2))))
    assert verdict.status == "fail"
    assert any(MEAN_LOGPROB in r and "< -3" in r for r in verdict.reasons), verdict.reasons
    assert evaluate(gate(min=-3.0), aggregate(lm_windows(spread(-1.3), spread(-1.2)))).status == "pass"


def test_a_decrease_against_the_baseline_fails_only_when_shown_beyond_the_margin():
    spec = gate(max_decrease_vs_baseline=0.5)
    assert evaluate(spec, aggregate(lm_windows(spread(-2.5), spread(-1.2)))).status == "fail"
    assert evaluate(spec, aggregate(lm_windows(spread(-1.4), spread(-1.2)))).status == "pass"   # within the margin
    better = evaluate(spec, aggregate(lm_windows(spread(-0.5), spread(-1.2))))
    assert better.status == "pass"
    higher_worse = gate(max_increase_vs_baseline=0.5)   # a metric where lower is better
    assert evaluate(higher_worse, aggregate(lm_windows(spread(-0.5), spread(-1.2)))).status == "fail"


def test_without_baseline_samples_the_relative_bound_is_insufficient_and_the_absolute_one_decides():
    """A canary's 100 % step: no baseline traffic to compare with."""
    alone = aggregate([lm_windows(spread(-1.2), [])[1]])
    verdict = evaluate(gate(min=-3.0, max_decrease_vs_baseline=0.5), alone)
    assert verdict.status == "pass"
    assert {c.name: c.status for c in verdict.checks}[f"metric_vs_baseline:{MEAN_LOGPROB}"] == "insufficient"


def test_a_gated_metric_the_candidate_never_reports_fails_closed_once_it_answered_enough_requests():
    """Fail closed: a candidate whose generations carry no log-prob is neither promoted past a log-prob gate nor
    left holding its traffic share: a few answers wait (insufficient), enough answers without it fail."""
    def silent(n: int) -> list[VariantWindow]:
        return [VariantWindow(CANDIDATE, "2", n, 0, 0, [10.0] * n), VariantWindow(BASELINE, "1", 60, 0, 0, [10.0] * 60)]

    assert evaluate(gate(min=-3.0), aggregate(silent(5))).status == "insufficient"
    verdict = evaluate(gate(min=-3.0), aggregate(silent(60)))
    assert verdict.status == "fail"
    assert any("reported no samples" in r and MEAN_LOGPROB in r for r in verdict.reasons), verdict.reasons


def test_a_metric_gate_needs_a_bound():
    with pytest.raises(SpecError, match="model_metrics"):
        gate()
    with pytest.raises(SpecError, match="above max"):
        gate(min=0.0, max=-1.0)


def test_the_closing_metrics_item_is_kept_by_the_relay_and_left_out_of_the_http_answer():
    relay = Relay(CANDIDATE, started=0.0)
    closing = {"metrics": {**model_metrics(4, -6.0), "bad": float("nan")}}
    assert [relay.take(p) for p in ('{"a": ', "1}", closing)] == ['{"a": ', "1}", None]
    assert relay.model_metrics == {MEAN_LOGPROB: -1.5, "completion_tokens": 4.0}
    assert relay.first_at is not None
    assert model_metrics(0, 0.0) == {"completion_tokens": 0.0}   # nothing generated: no mean

    async def pieces():
        for piece in ('{"a": ', "1}", closing):
            yield piece

    answer = asyncio.run(http_response({"status": 200, "stream": False}, pieces(), {}))
    assert json.loads(answer.body) == {"a": 1}
