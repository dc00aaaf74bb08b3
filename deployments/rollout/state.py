"""The rollout state machine: a pure ``transition(state, observation, command) → (state, actions)``.

Phases::

    Pending → Progressing(step i) → Promoting → Succeeded
    Pending → Shadowing → Concluded | Progressing(step 0)   (shadow mode: candidate judged on mirrored traffic)
    any active → RollingBack → RolledBack      (breach, abort, rollback)
    Progressing/Shadowing/Pending/Promoting ⇄ Paused   (pause/resume; registry unreachable while promoting)
    Progressing/Shadowing/Paused → Held        (controller restarted after the state went stale: baseline only)
    Progressing (A/B) → Concluded              (significance test decided; traffic back to baseline)

No clock, no I/O: time comes in ``Observation.now``, effects go out as actions
(:class:`SetTraffic`, :class:`MoveAlias`, :class:`RecordEvent`, :class:`ReleaseWarm`) that the controller
carries out *after* persisting the new state. Every change of phase, step or traffic is
an event with actor, command and reason.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from deployments.contracts import BASELINE, CANDIDATE, Traffic
from deployments.rollout.analysis import Verdict
from deployments.rollout.errors import RolloutError
from deployments.rollout.spec import RolloutSpec, parse_spec
from deployments.rollout.stats import TestResult

CHAMPION = "champion"
SYSTEM = "controller"


class Phase(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    SHADOWING = "shadowing"
    PAUSED = "paused"
    HELD = "held"
    PROMOTING = "promoting"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    CONCLUDED = "concluded"


ACTIVE = frozenset({Phase.PENDING, Phase.PROGRESSING, Phase.SHADOWING, Phase.PAUSED, Phase.HELD, Phase.PROMOTING,
                    Phase.ROLLING_BACK})
TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.CONCLUDED})


@dataclass
class RolloutState:
    rollout_id: str
    model: str
    spec: dict[str, Any]
    baseline_version: str
    candidate_version: str
    phase: Phase = Phase.PENDING
    step_index: int = -1
    step_started_at: float = 0.0
    failed_checks: int = 0
    passed_checks: int = 0           # shadow mode: passing intervals of mirrored traffic so far
    traffic: Traffic = field(default_factory=Traffic)
    paused_from: Phase | None = None
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    decided_at: float | None = None
    decision: dict[str, Any] | None = None
    alias_moved: bool = False
    previous_champion: str | None = None
    warm_until: float | None = None
    warm_released: bool = False
    ab_p_value: float = 1.0          # running minimum of the sequential test's p-value

    @property
    def parsed_spec(self) -> RolloutSpec:
        return parse_spec(self.spec)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["paused_from"] = self.paused_from.value if self.paused_from else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        data = dict(data)
        data["phase"] = Phase(data["phase"])
        data["paused_from"] = Phase(data["paused_from"]) if data.get("paused_from") else None
        data["traffic"] = Traffic.from_dict(data["traffic"])
        return cls(**data)


# ---- inputs ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """What the controller saw this tick. ``verdict`` is None between analysis intervals."""

    now: float
    verdict: Verdict | None = None
    step_requests: int = 0                 # candidate requests since the step started (shadow: mirrored ones)
    traffic_settled: bool = False          # every router reported after the epoch with no candidate requests
    alias_result: str | None = None        # "ok" or an error line, right after a MoveAlias was tried
    registry_healthy: bool | None = None   # probed while paused for the registry
    ab_result: TestResult | None = None    # A/B mode: the test on all samples so far


@dataclass(frozen=True)
class Command:
    name: str                 # pause | resume | promote | abort | rollback | restart (controller start-up)
    actor: str = SYSTEM
    reason: str = ""
    full: bool = False        # promote --full: skip the remaining steps


# ---- outputs --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetTraffic:
    traffic: Traffic


@dataclass(frozen=True)
class MoveAlias:
    model: str
    alias: str
    version: str


@dataclass(frozen=True)
class RecordEvent:
    event: dict[str, Any]


@dataclass(frozen=True)
class ReleaseWarm:
    variant: str
    version: str


Action = SetTraffic | MoveAlias | RecordEvent | ReleaseWarm


def weights_for(percent: float) -> dict[str, float]:
    """Traffic weights with ``percent`` on the candidate; variants with no traffic are left out."""
    share = round(percent / 100.0, 6)
    if share >= 1.0:
        return {CANDIDATE: 1.0}
    if share <= 0.0:
        return {BASELINE: 1.0}
    return {BASELINE: round(1.0 - share, 6), CANDIDATE: share}


# ---- start ----------------------------------------------------------------------------------------------------

def start(spec: RolloutSpec, baseline_version: str, candidate_version: str, now: float, epoch: int,
          actor: str, reason: str = "", rollout_id: str | None = None,
          previous: RolloutState | None = None) -> tuple[RolloutState, list[Action]]:
    """A new rollout in Pending. Refused while another rollout of the model is active."""
    if previous is not None and previous.active:
        raise RolloutError(f"rollout {previous.rollout_id} is {previous.phase.value}; abort it or wait for it to end")
    if str(baseline_version) == str(candidate_version):
        raise RolloutError(f"baseline and candidate are the same version ({baseline_version})", 400)
    rid = rollout_id or f"{spec.name or spec.model}-{uuid.uuid4().hex[:8]}"
    state = RolloutState(rollout_id=rid, model=spec.model, spec=spec.model_dump(mode="json"),
                         baseline_version=str(baseline_version), candidate_version=str(candidate_version),
                         created_at=now, updated_at=now,
                         traffic=Traffic(weights={BASELINE: 1.0}, epoch=epoch, rollout_id=rid))
    event = _event(None, state, now, "start", actor, reason or f"{spec.mode} rollout of v{candidate_version} "
                   f"against v{baseline_version}")
    return state, [RecordEvent(event)]


# ---- transition -----------------------------------------------------------------------------------------------

def transition(state: RolloutState, obs: Observation, command: Command | None = None
               ) -> tuple[RolloutState, list[Action]]:
    """The whole rollout policy. Returns a new state (the input is not modified) and the actions to take."""
    new = copy.deepcopy(state)
    new.updated_at = obs.now
    actions: list[Action] = []
    if command is not None:
        handler = _COMMANDS.get(command.name)
        if handler is None:
            raise RolloutError(f"unknown command {command.name!r}", 400)
        handler(state, new, obs, command, actions)
    else:
        _TICKS.get(state.phase, _nothing)(state, new, obs, actions)
    return new, actions


# ---- ticks ----------------------------------------------------------------------------------------------------

def _nothing(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    return None


def _tick_pending(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    _enter_first(old, new, obs, SYSTEM, "start", "first step", actions)


def _tick_shadowing(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    """Judge the candidate on its mirrored copies; callers are served by the baseline throughout."""
    spec = old.parsed_spec
    assert spec.shadow is not None
    if obs.verdict is None or obs.verdict.status == "insufficient":
        return
    if obs.verdict.status == "fail":
        _count_failure(old, new, obs, actions)
        return
    new.passed_checks = old.passed_checks + 1
    if new.passed_checks < spec.shadow.passing_checks or obs.step_requests < spec.min_requests:
        return
    reason = (f"shadow: {new.passed_checks} passing checks on {obs.step_requests} mirrored requests; "
              f"the candidate would pass")
    if spec.shadow.then == "canary":
        _enter_step(old, new, obs, 0, SYSTEM, "analysis", reason + "; starting the canary steps", actions)
        return
    new.phase = Phase.CONCLUDED
    new.reason = reason
    new.decided_at = obs.now
    _set_traffic(new, {BASELINE: 1.0}, actions)
    new.decision = {"outcome": "shadow_passed", "at": obs.now, "epoch": new.traffic.epoch,
                    "passed_checks": new.passed_checks, "mirrored_requests": obs.step_requests}
    actions.append(RecordEvent(_event(old, new, obs.now, "analysis", SYSTEM, reason)))


def _tick_progressing(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    spec = old.parsed_spec
    if obs.verdict is None:
        return
    if obs.verdict.status == "fail":
        _count_failure(old, new, obs, actions)
        return
    if spec.mode == "ab":
        _maybe_conclude(old, new, obs, spec, actions)
        return
    if obs.verdict.status != "pass":
        return
    if obs.step_requests < spec.min_requests or obs.now - old.step_started_at < spec.interval_s:
        return
    if old.step_index >= spec.last_step:
        _enter_promoting(old, new, obs, SYSTEM, "analysis", "all steps passed", actions)
    else:
        _enter_step(old, new, obs, old.step_index + 1, SYSTEM, "analysis",
                    f"step {old.step_index + 1} passed with {obs.step_requests} candidate requests", actions)


def _tick_paused(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    """Paused still watches the candidate: a breach rolls back. A registry pause retries when MLflow is back."""
    watched = old.traffic.weights.get(CANDIDATE) or old.traffic.shadow == CANDIDATE
    if obs.verdict is not None and obs.verdict.status == "fail" and watched:
        _count_failure(old, new, obs, actions)
        return
    if old.paused_from == Phase.PROMOTING and obs.registry_healthy:
        _enter_promoting(old, new, obs, SYSTEM, "retry", "registry reachable again; retrying promotion", actions)


def _tick_promoting(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    if obs.alias_result is None:
        return
    if obs.alias_result == "ok":
        spec = old.parsed_spec
        new.phase = Phase.SUCCEEDED
        new.alias_moved = True
        new.decided_at = obs.now
        new.warm_until = obs.now + spec.keep_old_warm_s
        new.decision = {"outcome": "promoted", "at": obs.now, "version": old.candidate_version,
                        "previous_champion": old.previous_champion or old.baseline_version}
        new.reason = f"alias {CHAMPION} moved to v{old.candidate_version}"
        actions.append(RecordEvent(_event(old, new, obs.now, "promote", SYSTEM, new.reason,
                                          warm_until=new.warm_until)))
    else:
        new.phase = Phase.PAUSED
        new.paused_from = Phase.PROMOTING
        new.reason = f"registry unreachable: {obs.alias_result}"
        actions.append(RecordEvent(_event(old, new, obs.now, "pause", SYSTEM, new.reason)))


def _tick_rolling_back(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    needs_alias = old.alias_moved
    if obs.alias_result is not None and needs_alias:
        if obs.alias_result != "ok":
            actions.append(RecordEvent(_event(old, new, obs.now, "alias_revert_failed", SYSTEM, obs.alias_result)))
            return
        new.alias_moved = False
        needs_alias = False
        actions.append(RecordEvent(_event(old, new, obs.now, "alias_reverted", SYSTEM,
                                          f"alias {CHAMPION} back on v{old.baseline_version}")))
    if needs_alias and obs.registry_healthy:
        actions.append(MoveAlias(old.model, CHAMPION, old.baseline_version))
        return
    if not needs_alias and obs.traffic_settled:
        new.phase = Phase.ROLLED_BACK
        new.reason = old.reason
        actions.append(RecordEvent(_event(old, new, obs.now, "rolled_back", SYSTEM,
                                          "every router serves the baseline only")))


def _tick_succeeded(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    if old.warm_until is not None and not old.warm_released and obs.now >= old.warm_until:
        new.warm_released = True
        actions.append(ReleaseWarm(BASELINE, old.baseline_version))
        actions.append(RecordEvent(_event(old, new, obs.now, "release_warm", SYSTEM,
                                          f"v{old.baseline_version} no longer kept warm")))


_TICKS = {
    Phase.PENDING: _tick_pending,
    Phase.PROGRESSING: _tick_progressing,
    Phase.SHADOWING: _tick_shadowing,
    Phase.PAUSED: _tick_paused,
    Phase.PROMOTING: _tick_promoting,
    Phase.ROLLING_BACK: _tick_rolling_back,
    Phase.SUCCEEDED: _tick_succeeded,
}


# ---- commands -------------------------------------------------------------------------------------------------

def _cmd_pause(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command, actions: list[Action]) -> None:
    _require(old, cmd, {Phase.PENDING, Phase.PROGRESSING, Phase.SHADOWING, Phase.PROMOTING})
    new.phase = Phase.PAUSED
    new.paused_from = old.phase
    new.reason = cmd.reason or "paused"
    actions.append(RecordEvent(_event(old, new, obs.now, cmd.name, cmd.actor, new.reason)))


def _cmd_resume(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command, actions: list[Action]) -> None:
    _require(old, cmd, {Phase.PAUSED, Phase.HELD})
    resume_to = old.paused_from if old.phase == Phase.PAUSED else Phase.PROGRESSING
    new.paused_from = None
    if resume_to == Phase.PROMOTING:
        _enter_promoting(old, new, obs, cmd.actor, cmd.name, cmd.reason or "resumed", actions)
    elif resume_to in (Phase.PENDING, Phase.SHADOWING) or old.step_index < 0:
        _enter_first(old, new, obs, cmd.actor, cmd.name, cmd.reason or "resumed", actions)
    else:
        _enter_step(old, new, obs, old.step_index, cmd.actor, cmd.name, cmd.reason or "resumed", actions)


def _cmd_promote(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command, actions: list[Action]) -> None:
    _require(old, cmd, {Phase.PENDING, Phase.PROGRESSING, Phase.SHADOWING, Phase.PAUSED, Phase.HELD})
    if old.phase == Phase.PAUSED and old.paused_from == Phase.PROMOTING:
        _enter_promoting(old, new, obs, cmd.actor, cmd.name, cmd.reason or "manual promotion", actions)
        return
    spec = old.parsed_spec
    new.paused_from = None
    if cmd.full or spec.mode == "ab" or old.step_index >= spec.last_step:
        _enter_promoting(old, new, obs, cmd.actor, cmd.name, cmd.reason or "manual promotion", actions)
    else:
        _enter_step(old, new, obs, old.step_index + 1, cmd.actor, cmd.name, cmd.reason or "manual step", actions)


def _cmd_abort(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command, actions: list[Action]) -> None:
    _require(old, cmd, ACTIVE - {Phase.ROLLING_BACK})
    _enter_rolling_back(old, new, obs, cmd.actor, cmd.name, cmd.reason or f"{cmd.name} requested", actions)


def _cmd_rollback(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command,
                  actions: list[Action]) -> None:
    if old.phase == Phase.SUCCEEDED:
        if old.warm_released:
            raise RolloutError(f"v{old.baseline_version} is no longer kept warm; start a new rollout back to it")
        _enter_rolling_back(old, new, obs, cmd.actor, cmd.name, cmd.reason or "rollback after promotion", actions)
        actions.append(MoveAlias(old.model, CHAMPION, old.baseline_version))
        return
    _cmd_abort(old, new, obs, cmd, actions)


def _cmd_restart(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command,
                 actions: list[Action]) -> None:
    """The controller came back: restore what was persisted, or hold at baseline when it is too old to trust."""
    age = obs.now - old.updated_at
    spec = old.parsed_spec
    if old.phase in (Phase.PROGRESSING, Phase.SHADOWING, Phase.PENDING, Phase.PAUSED) and age > spec.stale_after_s:
        new.phase = Phase.HELD
        new.paused_from = None
        new.reason = (f"controller was away {age:.0f}s (> {spec.stale_after_s:g}s); holding at baseline "
                      f"until `rayline canary resume` or `abort`")
        _set_traffic(new, {BASELINE: 1.0}, actions)
        actions.append(RecordEvent(_event(old, new, obs.now, "hold", cmd.actor, new.reason, away_s=age)))
        return
    if old.phase in TERMINAL and old.phase != Phase.SUCCEEDED:
        _set_traffic(new, {BASELINE: 1.0}, actions)
    else:
        _set_traffic(new, dict(old.traffic.weights), actions, shadow=old.traffic.shadow)
    if old.phase in (Phase.PROGRESSING, Phase.SHADOWING):
        new.step_started_at = obs.now   # requests counted before the restart are gone with the old process
    actions.append(RecordEvent(_event(old, new, obs.now, "restart", cmd.actor,
                                      f"controller restarted; resuming {old.phase.value}", away_s=age)))
    if old.phase == Phase.PROMOTING:
        actions.append(MoveAlias(old.model, CHAMPION, old.candidate_version))
    if old.phase == Phase.ROLLING_BACK and old.alias_moved:
        actions.append(MoveAlias(old.model, CHAMPION, old.baseline_version))


_COMMANDS = {
    "pause": _cmd_pause,
    "resume": _cmd_resume,
    "promote": _cmd_promote,
    "abort": _cmd_abort,
    "rollback": _cmd_rollback,
    "restart": _cmd_restart,
}
COMMANDS = tuple(_COMMANDS)


# ---- shared moves ---------------------------------------------------------------------------------------------

def _require(old: RolloutState, cmd: Command, phases: set[Phase] | frozenset[Phase]) -> None:
    if old.phase not in phases:
        allowed = ", ".join(sorted(p.value for p in phases))
        raise RolloutError(f"cannot {cmd.name} rollout {old.rollout_id}: it is {old.phase.value} "
                           f"(allowed when {allowed})")


def _set_traffic(new: RolloutState, weights: dict[str, float], actions: list[Action],
                 shadow: str | None = None) -> None:
    new.traffic = Traffic(weights=weights, shadow=shadow, epoch=new.traffic.epoch + 1, rollout_id=new.rollout_id)
    actions.append(SetTraffic(copy.deepcopy(new.traffic)))


def _enter_first(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                 reason: str, actions: list[Action]) -> None:
    """Where a rollout begins (and resumes from before its first step): shadowing in shadow mode, else step 0."""
    if old.parsed_spec.mode == "shadow" and old.step_index < 0:
        _enter_shadow(old, new, obs, actor, command, reason, actions)
    else:
        _enter_step(old, new, obs, 0, actor, command, reason, actions)


def _enter_shadow(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                  reason: str, actions: list[Action]) -> None:
    """All callers on the baseline, a mirrored copy of every request to the candidate."""
    new.phase = Phase.SHADOWING
    new.step_started_at = obs.now
    new.failed_checks = 0
    new.passed_checks = 0
    new.reason = f"{reason}: mirroring live traffic to the candidate, serving callers from the baseline"
    _set_traffic(new, {BASELINE: 1.0}, actions, shadow=CANDIDATE)
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, new.reason)))


def _enter_step(old: RolloutState, new: RolloutState, obs: Observation, index: int, actor: str, command: str,
                reason: str, actions: list[Action]) -> None:
    spec = old.parsed_spec
    new.phase = Phase.PROGRESSING
    new.step_index = index
    new.step_started_at = obs.now
    new.failed_checks = 0
    new.reason = reason
    _set_traffic(new, weights_for(spec.candidate_percent(index)), actions)
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, reason)))


def _enter_promoting(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                     reason: str, actions: list[Action]) -> None:
    new.phase = Phase.PROMOTING
    new.paused_from = None
    new.reason = reason
    if new.traffic.weights != {CANDIDATE: 1.0}:
        _set_traffic(new, {CANDIDATE: 1.0}, actions)
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, reason)))
    actions.append(MoveAlias(old.model, CHAMPION, old.candidate_version))


def _enter_rolling_back(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                        reason: str, actions: list[Action]) -> None:
    new.phase = Phase.ROLLING_BACK
    new.paused_from = None
    new.reason = reason
    new.decided_at = obs.now
    _set_traffic(new, {BASELINE: 1.0}, actions)
    new.decision = {"outcome": "rolled_back", "at": obs.now, "epoch": new.traffic.epoch, "reason": reason,
                    "actor": actor}
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, reason)))


def _count_failure(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    assert obs.verdict is not None
    spec = old.parsed_spec
    new.failed_checks = old.failed_checks + 1
    why = "; ".join(obs.verdict.reasons)
    if new.failed_checks >= spec.failed_checks_before_rollback:
        _enter_rolling_back(old, new, obs, SYSTEM, "analysis",
                            f"{new.failed_checks} failed checks: {why}", actions)
    else:
        actions.append(RecordEvent(_event(old, new, obs.now, "check_failed", SYSTEM,
                                          f"check {new.failed_checks}/{spec.failed_checks_before_rollback} "
                                          f"failed: {why}")))


def _maybe_conclude(old: RolloutState, new: RolloutState, obs: Observation, spec: RolloutSpec,
                    actions: list[Action]) -> None:
    """A/B: stop when the test decided (sequential) or the sample/duration is complete (fixed horizon)."""
    assert spec.ab is not None
    result = obs.ab_result
    if result is None:
        return
    if spec.ab.test == "sequential":
        new.ab_p_value = result.p_value
    elapsed = obs.now - old.step_started_at
    complete = min(result.n_baseline, result.n_candidate) >= spec.ab.min_samples
    timed_out = spec.ab.duration_s is not None and elapsed >= spec.ab.duration_s
    decided = result.decision != "continue" if spec.ab.test == "sequential" else complete
    done = decided or timed_out
    if not done:
        return
    decision = result.decision if result.decision != "continue" else "no_difference"
    reason = (f"A/B {result.test}: effect {result.effect:+.4g} [{result.ci_low:.4g}, {result.ci_high:.4g}], "
              f"p={result.p_value:.3g}, n={result.n_baseline}/{result.n_candidate} → {decision}")
    new.decided_at = obs.now
    new.decision = {"outcome": decision, "at": obs.now, "ab": {**result.to_dict(), "decision": decision}}
    if decision == "candidate_better" and spec.ab.promote_on_win:
        _enter_promoting(old, new, obs, SYSTEM, "ab_test", reason, actions)
        return
    new.phase = Phase.CONCLUDED
    new.reason = reason
    _set_traffic(new, {BASELINE: 1.0}, actions)
    new.decision["epoch"] = new.traffic.epoch
    actions.append(RecordEvent(_event(old, new, obs.now, "ab_test", SYSTEM, reason)))


def _event(old: RolloutState | None, new: RolloutState, now: float, command: str, actor: str, reason: str,
           **details: Any) -> dict[str, Any]:
    return {
        "at": now,
        "rollout_id": new.rollout_id,
        "command": command,
        "actor": actor,
        "reason": reason,
        "from": old.phase.value if old else None,
        "to": new.phase.value,
        "step": new.step_index,
        "weights": dict(new.traffic.weights),
        "epoch": new.traffic.epoch,
        **details,
    }
