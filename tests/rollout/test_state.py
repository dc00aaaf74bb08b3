"""The rollout state machine, one test per transition: pure inputs → new state and actions."""

from __future__ import annotations

import pytest

from deployments.contracts import BASELINE, CANDIDATE
from deployments.rollout.errors import RolloutError
from deployments.rollout.state import (
    CHAMPION,
    Command,
    MoveAlias,
    Observation,
    Phase,
    RecordEvent,
    ReleaseWarm,
    RolloutState,
    SetTraffic,
    alias_move_current,
    start,
    transition,
    weights_for,
)
from deployments.rollout.stats import two_proportion
from tests.rollout.helpers import make_spec, progressing, started, verdict


def kinds(actions):
    return [type(a).__name__ for a in actions]


def events(actions):
    return [a.event for a in actions if isinstance(a, RecordEvent)]


def moves(actions):
    """(model, alias, version) of every alias move, without its fencing tags."""
    return [(a.model, a.alias, a.version) for a in actions if isinstance(a, MoveAlias)]


def traffic_of(actions):
    found = [a.traffic for a in actions if isinstance(a, SetTraffic)]
    return found[-1] if found else None


def test_start_creates_a_pending_rollout_with_all_traffic_on_the_baseline_and_an_audit_event():
    state, actions = start(make_spec(), "1", "2", now=10.0, epoch=7, actor="alice", reason="ticket 42")
    assert state.phase == Phase.PENDING
    assert state.traffic.weights == {BASELINE: 1.0} and state.traffic.epoch == 7
    (event,) = events(actions)
    assert event["actor"] == "alice" and event["reason"] == "ticket 42" and event["to"] == "pending"


def test_start_is_refused_while_another_rollout_of_the_model_is_active():
    with pytest.raises(RolloutError, match="abort it") as err:
        start(make_spec(), "1", "2", now=1.0, epoch=0, actor="bob", previous=progressing())
    assert err.value.status_code == 409


def test_start_is_refused_when_baseline_and_candidate_resolve_to_the_same_version():
    with pytest.raises(RolloutError, match="same version"):
        start(make_spec(), "2", "2", now=1.0, epoch=0, actor="bob")


def test_pending_moves_to_the_first_step_and_sends_its_share_to_the_candidate():
    state, actions = transition(started(), Observation(now=101.0))
    assert state.phase == Phase.PROGRESSING and state.step_index == 0
    assert traffic_of(actions).weights == {BASELINE: 0.75, CANDIDATE: 0.25}
    assert traffic_of(actions).epoch == 1


def test_a_passing_check_with_enough_requests_after_one_interval_advances_one_step():
    spec = make_spec()
    state = progressing(spec)
    new, actions = transition(state, Observation(now=101.5, verdict=verdict(spec), step_requests=25))
    assert new.step_index == 1 and new.phase == Phase.PROGRESSING
    assert traffic_of(actions).weights == {BASELINE: 0.5, CANDIDATE: 0.5}
    assert events(actions)[0]["reason"].startswith("step 1 passed")


def test_a_step_does_not_advance_before_min_requests():
    spec = make_spec()
    new, actions = transition(progressing(spec), Observation(now=105.0, verdict=verdict(spec), step_requests=19))
    assert new.step_index == 0 and actions == []


def test_a_step_does_not_advance_before_one_interval_has_passed():
    spec = make_spec(interval_s=5)
    new, actions = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=500))
    assert new.step_index == 0 and actions == []


def test_insufficient_data_neither_advances_nor_counts_as_a_failure():
    spec = make_spec()
    new, actions = transition(progressing(spec), Observation(now=110.0, verdict=verdict(spec, cand_requests=3),
                                                             step_requests=500))
    assert new.step_index == 0 and new.failed_checks == 0 and actions == []


def test_one_failed_check_below_the_limit_is_recorded_but_keeps_traffic():
    spec = make_spec(failed_checks_before_rollback=2)
    state = progressing(spec)
    new, actions = transition(state, Observation(now=101.0, verdict=verdict(spec, 50, 10)))
    assert new.phase == Phase.PROGRESSING and new.failed_checks == 1
    assert kinds(actions) == ["RecordEvent"] and "error rate 20.0%" in events(actions)[0]["reason"]
    assert new.traffic == state.traffic


def test_reaching_the_failed_check_limit_sends_all_traffic_to_the_baseline_at_once_and_records_why():
    spec = make_spec(failed_checks_before_rollback=2)
    state = progressing(spec)
    state, _ = transition(state, Observation(now=101.0, verdict=verdict(spec, 50, 10)))
    new, actions = transition(state, Observation(now=102.0, verdict=verdict(spec, 50, 10)))
    assert new.phase == Phase.ROLLING_BACK
    assert traffic_of(actions).weights == {BASELINE: 1.0}
    assert traffic_of(actions).epoch == state.traffic.epoch + 1
    assert new.decision["outcome"] == "rolled_back" and new.decision["epoch"] == new.traffic.epoch
    assert new.decision["at"] == 102.0 and "2 failed checks" in new.decision["reason"]


def test_passing_a_step_resets_the_failed_check_count():
    spec = make_spec(failed_checks_before_rollback=3)
    state = progressing(spec)
    state, _ = transition(state, Observation(now=101.0, verdict=verdict(spec, 50, 10)))
    state, _ = transition(state, Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    assert state.step_index == 1 and state.failed_checks == 0


def test_rolling_back_ends_rolled_back_once_routers_serve_only_the_baseline():
    state = progressing()
    state, _ = transition(state, Observation(now=101.0), Command("abort", actor="alice"))
    waiting, actions = transition(state, Observation(now=101.1, traffic_settled=False))
    assert waiting.phase == Phase.ROLLING_BACK and actions == []
    done, actions = transition(state, Observation(now=101.5, traffic_settled=True))
    assert done.phase == Phase.ROLLED_BACK and events(actions)[0]["to"] == "rolled_back"


def test_passing_the_last_step_starts_promotion_by_moving_the_champion_alias():
    spec = make_spec(steps=[100])
    new, actions = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    assert new.phase == Phase.PROMOTING
    assert ("iris", CHAMPION, "2") in moves(actions)


def test_alias_moved_marks_success_and_keeps_the_old_version_warm_for_the_configured_time():
    spec = make_spec(steps=[100], keep_old_warm_s=30)
    promoting, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    new, actions = transition(promoting, Observation(now=103.0, alias_result="ok"))
    assert new.phase == Phase.SUCCEEDED and new.alias_moved and new.warm_until == 133.0
    assert new.decision["outcome"] == "promoted"
    _, actions = transition(new, Observation(now=120.0))
    assert actions == []
    released, actions = transition(new, Observation(now=134.0))
    assert released.warm_released and ReleaseWarm(BASELINE, "1") in actions


def test_registry_unreachable_at_promotion_pauses_without_promoting_and_keeps_traffic():
    spec = make_spec(steps=[100])
    promoting, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    paused, actions = transition(promoting, Observation(now=103.0, alias_result="MLflow is not reachable"))
    assert paused.phase == Phase.PAUSED and paused.paused_from == Phase.PROMOTING
    assert "registry unreachable" in paused.reason and not paused.alias_moved
    assert traffic_of(actions) is None and paused.traffic == promoting.traffic
    waiting, actions = transition(paused, Observation(now=104.0, registry_healthy=False))
    assert waiting.phase == Phase.PAUSED and actions == []
    retry, actions = transition(paused, Observation(now=105.0, registry_healthy=True))
    assert retry.phase == Phase.PROMOTING and ("iris", CHAMPION, "2") in moves(actions)


def test_pause_keeps_traffic_and_stops_steps_but_a_breach_still_rolls_back():
    spec = make_spec(failed_checks_before_rollback=1)
    paused, actions = transition(progressing(spec), Observation(now=101.0), Command("pause", "alice", "look"))
    assert paused.phase == Phase.PAUSED and traffic_of(actions) is None
    stays, actions = transition(paused, Observation(now=103.0, verdict=verdict(spec), step_requests=999))
    assert stays.phase == Phase.PAUSED and stays.step_index == 0
    rolled, actions = transition(paused, Observation(now=104.0, verdict=verdict(spec, 50, 25)))
    assert rolled.phase == Phase.ROLLING_BACK and traffic_of(actions).weights == {BASELINE: 1.0}


def test_resume_returns_to_the_paused_step():
    paused, _ = transition(progressing(), Observation(now=101.0), Command("pause"))
    resumed, actions = transition(paused, Observation(now=110.0), Command("resume", "alice"))
    assert resumed.phase == Phase.PROGRESSING and resumed.step_index == 0 and resumed.step_started_at == 110.0
    assert events(actions)[0]["actor"] == "alice"


def test_promote_moves_one_step_and_promote_full_goes_straight_to_promotion():
    state = progressing()
    step, actions = transition(state, Observation(now=101.0), Command("promote", "alice"))
    assert step.step_index == 1 and traffic_of(actions).weights[CANDIDATE] == 0.5
    full, actions = transition(state, Observation(now=101.0), Command("promote", "alice", full=True))
    assert full.phase == Phase.PROMOTING and traffic_of(actions).weights == {CANDIDATE: 1.0}
    assert ("iris", CHAMPION, "2") in moves(actions)


def test_abort_rolls_back_with_the_actor_and_reason_recorded():
    new, actions = transition(progressing(), Observation(now=101.0), Command("abort", "alice", "bad dashboards"))
    assert new.phase == Phase.ROLLING_BACK and new.decision["actor"] == "alice"
    assert events(actions)[0]["reason"] == "bad dashboards" and events(actions)[0]["command"] == "abort"


def test_rollback_after_success_restores_baseline_traffic_and_moves_the_alias_back():
    spec = make_spec(steps=[100])
    promoting, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    done, _ = transition(promoting, Observation(now=103.0, alias_result="ok"))
    back, actions = transition(done, Observation(now=104.0), Command("rollback", "alice"))
    assert back.phase == Phase.ROLLING_BACK and traffic_of(actions).weights == {BASELINE: 1.0}
    assert ("iris", CHAMPION, "1") in moves(actions)
    not_yet, _ = transition(back, Observation(now=104.5, traffic_settled=True))
    assert not_yet.phase == Phase.ROLLING_BACK       # alias not back yet
    reverted, _ = transition(back, Observation(now=105.0, alias_result="ok", traffic_settled=True))
    assert reverted.phase == Phase.ROLLED_BACK and not reverted.alias_moved


def test_rollback_after_the_warm_period_is_refused():
    spec = make_spec(steps=[100], keep_old_warm_s=1)
    promoting, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    done, _ = transition(promoting, Observation(now=103.0, alias_result="ok"))
    released, _ = transition(done, Observation(now=200.0))
    with pytest.raises(RolloutError, match="no longer kept warm"):
        transition(released, Observation(now=201.0), Command("rollback"))


@pytest.mark.parametrize("name", ["pause", "resume", "promote", "abort"])
def test_commands_on_a_finished_rollout_are_conflicts(name):
    state = progressing()
    done, _ = transition(state, Observation(now=101.0), Command("abort"))
    done, _ = transition(done, Observation(now=102.0, traffic_settled=True))
    with pytest.raises(RolloutError) as err:
        transition(done, Observation(now=103.0), Command(name))
    assert err.value.status_code == 409


def test_unknown_commands_are_bad_requests():
    with pytest.raises(RolloutError) as err:
        transition(progressing(), Observation(now=1.0), Command("explode"))
    assert err.value.status_code == 400


def test_restart_within_the_stale_limit_restores_the_persisted_traffic_with_a_new_epoch():
    state = progressing(make_spec(stale_after_s=60))
    new, actions = transition(state, Observation(now=130.0), Command("restart"))
    assert new.phase == Phase.PROGRESSING and traffic_of(actions).weights == state.traffic.weights
    assert traffic_of(actions).epoch == state.traffic.epoch + 1 and new.step_started_at == 130.0


def test_restart_after_the_stale_limit_holds_at_baseline_until_resumed():
    state = progressing(make_spec(stale_after_s=60))
    held, actions = transition(state, Observation(now=500.0), Command("restart"))
    assert held.phase == Phase.HELD and traffic_of(actions).weights == {BASELINE: 1.0}
    assert "holding at baseline" in events(actions)[0]["reason"]
    resumed, actions = transition(held, Observation(now=501.0), Command("resume", "alice"))
    assert resumed.phase == Phase.PROGRESSING and traffic_of(actions).weights == {BASELINE: 0.75, CANDIDATE: 0.25}


def test_restart_while_promoting_retries_the_alias_move():
    spec = make_spec(steps=[100])
    promoting, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    new, actions = transition(promoting, Observation(now=103.0), Command("restart"))
    assert new.phase == Phase.PROMOTING and ("iris", CHAMPION, "2") in moves(actions)


def test_restart_while_rolling_back_keeps_all_traffic_on_the_baseline():
    rolling, _ = transition(progressing(), Observation(now=101.0), Command("abort"))
    new, actions = transition(rolling, Observation(now=1000.0), Command("restart"))
    assert new.phase == Phase.ROLLING_BACK and traffic_of(actions).weights == {BASELINE: 1.0}


def test_state_round_trips_through_json():
    state = progressing()
    assert RolloutState.from_dict(state.to_dict()) == state


def test_transition_does_not_modify_its_input():
    state = progressing()
    before = state.to_dict()
    transition(state, Observation(now=101.0), Command("abort"))
    assert state.to_dict() == before


def test_weights_leave_out_variants_without_traffic():
    assert weights_for(100) == {CANDIDATE: 1.0}
    assert weights_for(5) == {BASELINE: 0.95, CANDIDATE: 0.05}


def ab_spec(**ab):
    return make_spec(mode="ab", steps=[100], ab={"split": 50, "min_samples": 100, **ab})


def test_ab_mode_splits_traffic_at_the_fixed_share():
    state = progressing(ab_spec(split=30))
    assert state.traffic.weights == {BASELINE: 0.7, CANDIDATE: 0.3}


def test_ab_mode_concludes_when_the_sample_is_complete_and_returns_traffic_to_baseline():
    spec = ab_spec()
    result = two_proportion(95, 100, 80, 100)
    new, actions = transition(progressing(spec), Observation(now=105.0, verdict=verdict(spec), ab_result=result))
    assert new.phase == Phase.CONCLUDED and new.decision["outcome"] == "candidate_worse"
    assert new.decision["ab"]["p_value"] == result.p_value
    assert traffic_of(actions).weights == {BASELINE: 1.0}


def test_ab_mode_waits_for_the_sample_size():
    spec = ab_spec()
    new, actions = transition(progressing(spec), Observation(now=105.0, verdict=verdict(spec),
                                                             ab_result=two_proportion(45, 50, 30, 50)))
    assert new.phase == Phase.PROGRESSING and actions == []


def test_ab_mode_promotes_a_significant_winner_when_asked_to():
    spec = ab_spec(promote_on_win=True)
    new, actions = transition(progressing(spec), Observation(now=105.0, verdict=verdict(spec),
                                                             ab_result=two_proportion(80, 100, 97, 100)))
    assert new.phase == Phase.PROMOTING and ("iris", CHAMPION, "2") in moves(actions)


# ---- shadow mode ----------------------------------------------------------------------------------------------

def shadow_spec(**shadow):
    return make_spec(mode="shadow", shadow={"passing_checks": 2, **shadow})


def live_candidate_shares(actions):
    return [a.traffic.weights.get(CANDIDATE, 0.0) for a in actions if isinstance(a, SetTraffic)]


def passing(spec, state, now, requests=25):
    return transition(state, Observation(now=now, verdict=verdict(spec), step_requests=requests))


def test_shadow_mode_starts_by_mirroring_traffic_to_the_candidate_while_callers_stay_on_the_baseline():
    state, actions = transition(started(shadow_spec()), Observation(now=101.0))
    assert state.phase == Phase.SHADOWING and state.step_index == -1
    assert traffic_of(actions).weights == {BASELINE: 1.0} and traffic_of(actions).shadow == CANDIDATE


def test_shadow_mode_concludes_after_enough_passing_checks_saying_the_candidate_would_pass():
    spec = shadow_spec()
    once, first = passing(spec, progressing(spec), 101.5)
    assert once.phase == Phase.SHADOWING and once.passed_checks == 1 and first == []
    done, actions = passing(spec, once, 102.5)
    assert done.phase == Phase.CONCLUDED and done.decision["outcome"] == "shadow_passed"
    assert "would pass" in done.reason and done.decision["mirrored_requests"] == 25
    assert traffic_of(actions).weights == {BASELINE: 1.0} and traffic_of(actions).shadow is None
    assert not any(isinstance(a, MoveAlias) for a in actions)


def test_shadow_mode_needs_min_requests_of_mirrored_traffic_as_well_as_the_passing_checks():
    spec = shadow_spec(passing_checks=1)
    new, actions = passing(spec, progressing(spec), 101.5, requests=spec.min_requests - 1)
    assert new.phase == Phase.SHADOWING and actions == []


def test_shadow_mode_can_go_on_into_the_canary_steps_without_the_mirror():
    spec = shadow_spec(passing_checks=1, then="canary")
    new, actions = passing(spec, progressing(spec), 101.5)
    assert new.phase == Phase.PROGRESSING and new.step_index == 0
    assert traffic_of(actions).weights == {BASELINE: 0.75, CANDIDATE: 0.25} and traffic_of(actions).shadow is None


def test_a_breach_in_shadow_ends_the_run_failed_and_the_candidate_never_served_a_caller():
    spec = shadow_spec()
    state, actions = transition(started(spec), Observation(now=100.0))
    seen = list(actions)
    for now in (101.5, 102.5):
        state, actions = transition(state, Observation(now=now, verdict=verdict(spec, cand_errors=20)))
        seen += actions
    assert state.phase == Phase.ROLLING_BACK and "error rate" in state.decision["reason"]
    assert traffic_of(actions).shadow is None
    state, actions = transition(state, Observation(now=103.0, traffic_settled=True))
    assert state.phase == Phase.ROLLED_BACK
    assert set(live_candidate_shares(seen + actions)) == {0.0}


def test_pause_in_shadow_keeps_the_mirror_a_breach_still_rolls_back_and_resume_returns_to_shadowing():
    spec = make_spec(mode="shadow", failed_checks_before_rollback=1, shadow={"passing_checks": 2})
    paused, actions = transition(progressing(spec), Observation(now=101.0), Command("pause", "alice"))
    assert paused.phase == Phase.PAUSED and paused.traffic.shadow == CANDIDATE and actions and not traffic_of(actions)
    resumed, actions = transition(paused, Observation(now=102.0), Command("resume", "alice"))
    assert resumed.phase == Phase.SHADOWING and traffic_of(actions).shadow == CANDIDATE
    failed, _ = transition(paused, Observation(now=102.0, verdict=verdict(spec, cand_errors=20)))
    assert failed.phase == Phase.ROLLING_BACK


def test_promote_in_shadow_moves_into_the_first_canary_step():
    spec = shadow_spec()
    new, actions = transition(progressing(spec), Observation(now=101.0), Command("promote", "alice"))
    assert new.phase == Phase.PROGRESSING and traffic_of(actions).weights == {BASELINE: 0.75, CANDIDATE: 0.25}


def test_a_restarted_controller_restores_the_mirror_or_holds_and_then_resumes_shadowing():
    spec = shadow_spec()
    state = progressing(spec)
    back, actions = transition(state, Observation(now=110.0), Command("restart"))
    assert back.phase == Phase.SHADOWING and traffic_of(actions).shadow == CANDIDATE
    held, actions = transition(state, Observation(now=100.0 + spec.stale_after_s + 1), Command("restart"))
    assert held.phase == Phase.HELD and traffic_of(actions).shadow is None
    resumed, actions = transition(held, Observation(now=300.0), Command("resume", "alice"))
    assert resumed.phase == Phase.SHADOWING and traffic_of(actions).weights == {BASELINE: 1.0}


# ---- fencing, fail-closed and gates (issue 15) ----------------------------------------------------------------

def test_start_is_a_conflict_naming_both_version_pairs_when_the_slots_serve_other_versions():
    with pytest.raises(RolloutError) as err:
        start(make_spec(), "1", "3", now=1.0, epoch=0, actor="bob", served={BASELINE: "1", CANDIDATE: "2"})
    assert err.value.status_code == 409
    assert "baseline v1" in str(err.value) and "candidate v3" in str(err.value) and "candidate v2" in str(err.value)


def test_start_is_a_conflict_while_a_slot_of_the_app_still_waits_for_its_model():
    with pytest.raises(RolloutError) as err:
        start(make_spec(), "1", "2", now=1.0, epoch=0, actor="bob", served={BASELINE: "1"})
    assert err.value.status_code == 409 and "serves no candidate version yet" in str(err.value)
    with pytest.raises(RolloutError, match="no baseline and no candidate"):
        start(make_spec(), "1", "2", now=1.0, epoch=0, actor="bob", served={})


def test_a_candidate_requiring_a_field_the_baseline_does_not_is_refused_before_traffic_with_both_schemas():
    schemas = ({"x1": "double"}, {"x1": "double", "x4": "double"})
    with pytest.raises(RolloutError) as err:
        start(make_spec(), "1", "2", now=1.0, epoch=0, actor="bob", schemas=schemas)
    assert err.value.status_code == 409 and "x4" in str(err.value)
    assert "{x1: double}" in str(err.value) and "{x1: double, x4: double}" in str(err.value)


def test_allowing_new_required_fields_starts_and_records_them_in_the_audit_event():
    schemas = ({"x1": "double"}, {"x1": "double", "x4": "double"})
    state, actions = start(make_spec(allow_new_required_fields=True), "1", "2", now=1.0, epoch=0, actor="bob",
                           schemas=schemas)
    assert state.forced_fields == ["x4"] and events(actions)[0]["forced_new_required_fields"] == ["x4"]


def test_failed_checks_must_be_consecutive_a_pass_in_between_resets_them():
    spec = make_spec(failed_checks_before_rollback=2)
    state = progressing(spec)
    for now in (101.0, 103.0, 105.0):
        state, _ = transition(state, Observation(now=now, verdict=verdict(spec, 50, 25)))
        assert state.phase == Phase.PROGRESSING and state.failed_checks == 1
        state, _ = transition(state, Observation(now=now + 1, verdict=verdict(spec, 200)))
        assert state.failed_checks == 0


def test_a_pause_during_promotion_stays_paused_and_its_queued_move_is_stale():
    spec = make_spec(steps=[100])
    promoting, actions = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    (move,) = [a for a in actions if isinstance(a, MoveAlias)]
    paused, _ = transition(promoting, Observation(now=102.5), Command("pause", "alice"))
    assert not alias_move_current(paused, move)
    still, actions = transition(paused, Observation(now=110.0, registry_healthy=True))
    assert still.phase == Phase.PAUSED and moves(actions) == []
    landed, _ = transition(paused, Observation(now=111.0, alias_result="ok", alias_epoch=move.epoch,
                                               alias_version="2"))
    assert landed.phase == Phase.PAUSED and landed.champion_seen == "2"   # a move already out did land


def test_an_abort_during_promotion_reads_champion_back_and_puts_it_back_before_rolled_back():
    spec = make_spec(steps=[100])
    state, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    state, _ = transition(state, Observation(now=102.1), Command("abort", "alice"))
    state, _ = transition(state, Observation(now=103.0, alias_result="ok", alias_epoch=1, alias_version="2"))
    assert state.phase == Phase.ROLLING_BACK and state.champion_seen == "2"
    waiting, actions = transition(state, Observation(now=104.0, traffic_settled=True, champion="2"))
    assert waiting.phase == Phase.ROLLING_BACK and moves(actions) == [("iris", CHAMPION, "1")]
    done, _ = transition(waiting, Observation(now=105.0, traffic_settled=True, alias_result="ok"))
    assert done.phase == Phase.ROLLED_BACK


def test_a_rollback_is_not_settled_while_an_alias_move_is_still_out():
    spec = make_spec(steps=[100])
    state, _ = transition(progressing(spec), Observation(now=102.0, verdict=verdict(spec), step_requests=50))
    state, _ = transition(state, Observation(now=102.1), Command("abort", "alice"))
    out, _ = transition(state, Observation(now=104.0, traffic_settled=True, alias_in_flight=True))
    assert out.phase == Phase.ROLLING_BACK
    checked, _ = transition(state, Observation(now=104.0, traffic_settled=True, champion="1"))
    assert checked.phase == Phase.ROLLED_BACK


def test_traffic_carries_a_lease_and_falls_back_to_the_version_in_charge():
    spec = make_spec(steps=[100], interval_s=2)
    state = progressing(spec)
    assert state.traffic.lease_s == 6.0 and state.traffic.fallback == BASELINE
    promoting, _ = transition(state, Observation(now=103.0, verdict=verdict(spec), step_requests=50))
    done, actions = transition(promoting, Observation(now=104.0, alias_result="ok"))
    assert done.phase == Phase.SUCCEEDED and traffic_of(actions).fallback == CANDIDATE
    assert traffic_of(actions).epoch > promoting.traffic.epoch
