"""The canary report is made from the persisted bundle alone: Markdown, HTML and a PNG plot."""

from __future__ import annotations

from deployments.rollout.report import candidate_share, write_report
from deployments.rollout.state import Observation, RecordEvent, transition
from deployments.rollout.stats import two_proportion
from deployments.rollout.store import RolloutStore
from tests.rollout.helpers import make_spec, progressing, verdict


def test_report_of_a_rolled_back_canary_states_the_decision_and_plots_the_timeline(tmp_path):
    store = RolloutStore(tmp_path / "state", "iris")
    spec = make_spec(failed_checks_before_rollback=1)
    state = progressing(spec)
    for i, errors in enumerate([0, 0, 12]):
        store.append_timeline(state.rollout_id, {
            "at": 100.0 + i, "weights": dict(state.traffic.weights), "status": "pass",
            "variants": {"baseline": {"requests": 90, "error_rate": 0.0, "p50_ms": 5, "p99_ms": 9},
                         "candidate": {"requests": 30, "error_rate": errors / 30, "p50_ms": 6, "p99_ms": 11}}})
    new, actions = transition(state, Observation(now=103.0, verdict=verdict(spec, 30, 12)))
    store.save(new, [a.event for a in actions if isinstance(a, RecordEvent)])
    paths = write_report(store.bundle(new.rollout_id), tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "rolling_back" in md and "error rate 40.0%" in md and "timeline.png" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in paths["html"].read_text()
    times, shares = candidate_share(store.bundle(new.rollout_id))
    assert shares[0] > 0 and shares[-1] == 0.0  # the plot ends with the rollback itself
    assert times[-1] == new.decided_at - new.created_at


def test_report_of_an_ab_test_states_effect_interval_p_value_and_decision(tmp_path):
    store = RolloutStore(tmp_path, "iris")
    spec = make_spec(mode="ab", steps=[100], ab={"min_samples": 100})
    state = progressing(spec)
    result = two_proportion(95, 100, 80, 100)
    new, actions = transition(state, Observation(now=110.0, verdict=verdict(spec), ab_result=result))
    store.save(new, [a.event for a in actions if isinstance(a, RecordEvent)])
    md = write_report(store.bundle(new.rollout_id), tmp_path / "r")["markdown"].read_text()
    assert "two_proportion" in md and "-0.15" in md and "95% CI" in md and "candidate_worse" in md
    assert f"{result.p_value:.4g}" in md
