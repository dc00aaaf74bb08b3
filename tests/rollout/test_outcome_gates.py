"""Gates and A/B samples on outcomes joined from feedback: a step waits for labels, a worse candidate fails."""

from __future__ import annotations

import pytest

from deployments.contracts import BASELINE, CANDIDATE, VariantWindow
from deployments.rollout.analysis import aggregate, evaluate, samples
from deployments.rollout.errors import SpecError
from deployments.rollout.spec import parse_spec
from tests.rollout.helpers import make_spec, windows

CORRECT_GATE = {"max_error_rate": 0.05, "min_requests_per_check": 10, "confidence": 0.95,
                "outcomes": {"correct": {"max_decrease": 0.02, "min_labelled": 50}}}


def labelled(name: str, base: list[float], cand: list[float]) -> list[VariantWindow]:
    """Healthy traffic on both variants plus outcome-only windows (feedback that came later)."""
    return [*windows(200), VariantWindow(BASELINE, "1", outcomes={name: base}),
            VariantWindow(CANDIDATE, "2", outcomes={name: cand})]


def judge(thresholds: dict, name: str, base: list[float], cand: list[float]):
    spec = make_spec(thresholds=thresholds)
    stats = aggregate(labelled(name, base, cand))
    return evaluate(spec, stats, stats)


def test_a_healthy_candidate_without_enough_labels_waits_and_is_never_passed():
    verdict = judge(CORRECT_GATE, "correct", [1.0] * 100, [1.0] * 49)
    assert verdict.status == "insufficient"
    assert any(c.name == "outcome:correct" and "waiting for feedback" in c.reason for c in verdict.checks)


def test_a_candidate_whose_labels_say_it_is_wrong_fails_with_both_accuracies_in_the_reason():
    verdict = judge(CORRECT_GATE, "correct", [1.0] * 90 + [0.0] * 10, [1.0] * 40 + [0.0] * 60)
    assert verdict.status == "fail"
    assert "candidate correct 0.4 (n=100)" in verdict.reasons[0] and "baseline's 0.9" in verdict.reasons[0]


def test_an_equally_accurate_candidate_passes_once_labelled():
    same = [1.0] * 90 + [0.0] * 10
    assert judge(CORRECT_GATE, "correct", same, same).status == "pass"


def test_a_small_accuracy_drop_within_the_bound_is_not_a_failure():
    verdict = judge(CORRECT_GATE, "correct", [1.0] * 90 + [0.0] * 10, [1.0] * 88 + [0.0] * 12)
    assert verdict.status == "pass"   # 2 points on 100 labels each is not shown beyond a 2-point margin


def test_mean_abs_error_and_reward_gates_use_the_direction_of_each_outcome():
    error_gate = {**CORRECT_GATE, "outcomes": {"abs_error": {"max_increase": 0.1, "min_labelled": 20}}}
    assert judge(error_gate, "abs_error", [0.1, 0.2] * 30, [1.1, 1.2] * 30).status == "fail"
    assert judge(error_gate, "abs_error", [1.1, 1.2] * 30, [0.1, 0.2] * 30).status == "pass"
    reward_gate = {**CORRECT_GATE, "outcomes": {"reward": {"max_decrease": 0.1, "min_labelled": 20}}}
    assert judge(reward_gate, "reward", [1.0, 2.0] * 30, [0.0, 1.0] * 30).status == "fail"
    assert judge(reward_gate, "reward", [0.0, 1.0] * 30, [1.0, 2.0] * 30).status == "pass"


@pytest.mark.parametrize(("outcomes", "message"), [
    ({"accuracy": {"max_decrease": 0.1}}, "unknown outcome 'accuracy'"),
    ({"correct": {"max_increase": 0.1}}, "takes max_decrease, not max_increase"),
    ({"abs_error": {"max_decrease": 0.1}}, "takes max_increase, not max_decrease"),
])
def test_outcome_thresholds_name_a_known_outcome_and_its_direction(outcomes, message):
    with pytest.raises(SpecError, match=message):
        make_spec(thresholds={"outcomes": outcomes})


def test_ab_tests_accept_outcomes_with_a_fitting_test_and_direction():
    base = {"model": "m", "candidate": "2", "mode": "ab"}
    assert parse_spec({**base, "ab": {"metric": "correct", "test": "two_proportion"}}).ab.metric == "correct"
    assert parse_spec({**base, "ab": {"metric": "reward", "test": "welch"}}).ab.test == "welch"
    with pytest.raises(SpecError, match="two_proportion needs a success-type metric"):
        parse_spec({**base, "ab": {"metric": "reward", "test": "two_proportion"}})
    with pytest.raises(SpecError, match="higher_is_better: false"):
        parse_spec({**base, "ab": {"metric": "abs_error", "test": "mann_whitney"}})


def test_ab_samples_of_an_outcome_are_the_labelled_requests_only():
    ws = labelled("reward", [1.0, 0.0], [0.5])
    assert samples(ws, BASELINE, "reward") == [1.0, 0.0] and samples(ws, CANDIDATE, "reward") == [0.5]
