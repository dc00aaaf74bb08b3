"""Bandit mode in the state machine: shares follow the cumulative rewards, health breaches roll back as in a
canary, a winning candidate is promoted, a winning baseline is kept, and the posterior survives a restart."""

from __future__ import annotations

import pytest

from deployments.contracts import BASELINE, CANDIDATE
from deployments.rollout.errors import SpecError
from deployments.rollout.state import CHAMPION, Command, MoveAlias, Observation, Phase, RecordEvent, transition
from deployments.rollout.store import RolloutStore
from tests.rollout.helpers import make_spec, progressing, verdict
from tests.rollout.test_state import traffic_of


def bandit_spec(**settings):
    return make_spec(mode="bandit", bandit={"min_share": 0.05, "promote_threshold": 0.95,
                                            "min_samples_per_arm": 50, **settings})


def rewards(base: tuple[int, int], cand: tuple[int, int]) -> dict[str, list[float]]:
    """(successes, n) per variant as 0/1 reward samples."""
    return {v: [1.0] * s + [0.0] * (n - s) for v, (s, n) in ((BASELINE, base), (CANDIDATE, cand))}


def update(state, spec, now, base, cand, status="pass"):
    v = verdict(spec) if status == "pass" else verdict(spec, cand_errors=100 if status == "fail" else 0,
                                                       cand_requests=200 if status == "fail" else 1)
    return transition(state, Observation(now=now, verdict=v, step_requests=200, rewards=rewards(base, cand)))


def test_a_bandit_starts_with_even_shares_and_moves_traffic_by_the_rewards_of_the_whole_rollout():
    spec = bandit_spec(min_samples_per_arm=10_000)
    state = progressing(spec)
    assert state.traffic.weights == {BASELINE: 0.5, CANDIDATE: 0.5} and state.bandit["updates"] == 0
    state, actions = update(state, spec, 101.0, (10, 100), (12, 100))      # too little to tell: about even
    first = state.traffic.weights[CANDIDATE]
    state, actions = update(state, spec, 102.0, (10, 100), (30, 100))
    assert state.bandit["arms"][CANDIDATE] == {"n": 200, "total": 42.0, "total_sq": 42.0}   # both intervals
    assert state.bandit["counted_until"] == 102.0
    assert traffic_of(actions).weights[CANDIDATE] > max(first, 0.9)
    assert traffic_of(actions).epoch > 1
    (event,) = [a.event for a in actions if isinstance(a, RecordEvent)]
    assert event["command"] == "bandit" and event["prob_best"][CANDIDATE] > 0.9


def test_a_health_breach_rolls_back_as_in_a_canary_and_a_failing_interval_leaves_its_rewards_for_later():
    spec = bandit_spec()
    state = progressing(spec)
    state, _ = update(state, spec, 101.0, (10, 100), (30, 100), status="fail")
    assert state.phase == Phase.PROGRESSING and state.failed_checks == 1
    assert state.bandit["updates"] == 0 and state.bandit["counted_until"] == 100.0
    state, actions = update(state, spec, 102.0, (10, 100), (30, 100), status="fail")
    assert state.phase == Phase.ROLLING_BACK and "error rate" in state.reason
    assert traffic_of(actions).weights == {BASELINE: 1.0}
    assert not [a for a in actions if isinstance(a, MoveAlias)]


def test_a_candidate_that_wins_is_promoted_and_the_champion_alias_moves():
    spec = bandit_spec()
    state = progressing(spec)
    state, actions = update(state, spec, 101.0, (10, 100), (40, 100))
    assert state.phase == Phase.PROMOTING
    assert traffic_of(actions).weights == {CANDIDATE: 1.0}
    (move,) = [a for a in actions if isinstance(a, MoveAlias)]
    assert (move.alias, move.version) == (CHAMPION, "2")
    assert state.decision["outcome"] == "candidate_better"
    state, _ = transition(state, Observation(now=102.0, alias_result="ok"))
    assert state.phase == Phase.SUCCEEDED


def test_a_winning_candidate_whose_health_is_not_yet_shown_keeps_exploring_instead_of_promoting():
    spec = bandit_spec()
    state, actions = update(progressing(spec), spec, 101.0, (10, 100), (40, 100), status="insufficient")
    assert state.phase == Phase.PROGRESSING and not [a for a in actions if isinstance(a, MoveAlias)]
    assert state.traffic.weights[CANDIDATE] == pytest.approx(0.95) and "health" in state.reason


def test_a_baseline_that_wins_ends_concluded_with_the_baseline_kept_and_no_alias_move():
    spec = bandit_spec()
    state, actions = update(progressing(spec), spec, 101.0, (40, 100), (10, 100))
    assert state.phase == Phase.CONCLUDED and state.decision["outcome"] == "baseline_better"
    assert traffic_of(actions).weights == {BASELINE: 1.0} and state.decision["epoch"] == state.traffic.epoch
    assert not [a for a in actions if isinstance(a, MoveAlias)] and "baseline kept" in state.reason


def test_no_winner_by_max_duration_concludes_with_the_baseline_kept():
    spec = bandit_spec(max_duration_s=30)
    state, _ = update(progressing(spec), spec, 110.0, (10, 100), (10, 100))
    assert state.phase == Phase.PROGRESSING
    state, actions = update(state, spec, 130.0, (10, 100), (10, 100))
    assert state.phase == Phase.CONCLUDED and state.decision["outcome"] == "no_winner"
    assert traffic_of(actions).weights == {BASELINE: 1.0}


def test_the_persisted_posterior_survives_a_controller_restart_and_later_rewards_add_to_it(tmp_path):
    spec = bandit_spec(min_samples_per_arm=10_000)
    state, _ = update(progressing(spec), spec, 101.0, (10, 100), (25, 100))
    shares = dict(state.traffic.weights)
    store = RolloutStore(tmp_path, "iris")
    state.generation = 1
    store.save(state, [])
    loaded = RolloutStore(tmp_path, "iris").load()
    resumed, actions = transition(loaded, Observation(now=105.0), Command("restart"))
    assert traffic_of(actions).weights == shares and traffic_of(actions).epoch > state.traffic.epoch
    assert resumed.bandit["arms"] == state.bandit["arms"]
    later, _ = update(resumed, spec, 106.0, (10, 100), (25, 100))
    assert later.bandit["arms"][CANDIDATE]["n"] == 200 and later.bandit["updates"] == 2


def test_resume_after_a_pause_restores_the_bandit_shares_and_manual_promote_promotes():
    spec = bandit_spec(min_samples_per_arm=10_000)
    state, _ = update(progressing(spec), spec, 101.0, (10, 100), (25, 100))
    shares = dict(state.traffic.weights)
    paused, _ = transition(state, Observation(now=102.0), Command("pause", "alice"))
    resumed, actions = transition(paused, Observation(now=103.0), Command("resume", "alice"))
    assert resumed.phase == Phase.PROGRESSING and traffic_of(actions).weights == shares
    promoted, actions = transition(resumed, Observation(now=104.0), Command("promote", "alice"))
    assert promoted.phase == Phase.PROMOTING and [a for a in actions if isinstance(a, MoveAlias)]


def test_bandit_settings_need_bandit_mode_and_a_floor_two_versions_can_both_get():
    assert bandit_spec().bandit.reward == "reward"
    with pytest.raises(SpecError, match="'bandit' settings need mode: bandit"):
        make_spec(bandit={"min_share": 0.1})
    with pytest.raises(SpecError, match=r"bandit\.min_share"):
        make_spec(mode="bandit", bandit={"min_share": 0.6})
