"""The rollout state machine: a pure ``transition(state, observation, command) → (state, actions)``.

Phases::

    Pending → Progressing(step i) → Promoting → Succeeded
    Pending → Shadowing → Concluded | Progressing(step 0)   (shadow mode: candidate judged on mirrored traffic)
    any active → RollingBack → RolledBack      (breach, abort, rollback)
    Progressing/Shadowing/Pending/Promoting ⇄ Paused   (pause/resume; registry unreachable while promoting)
    Progressing/Shadowing/Paused → Held        (controller restarted after the state went stale: baseline only)
    Progressing (A/B) → Concluded              (significance test decided; traffic back to baseline)
    Progressing (bandit) → Promoting | Concluded   (a version's P(best) passed the threshold, or time ran out)

No clock, no I/O: time comes in ``Observation.now``, effects go out as actions
(:class:`SetTraffic`, :class:`MoveAlias`, :class:`RecordEvent`, :class:`ReleaseWarm`) that the controller
carries out *after* persisting the new state. Every change of phase, step or traffic is
an event with actor, command and reason.

Fencing, so that a part that fails can only make things safer:

* ``generation`` counts persisted writes; the controller saves with a compare-and-swap on it and a
  writer that loses stops acting and reloads (:mod:`deployments.rollout.store`).
* Traffic carries a monotonic ``epoch`` (routers ignore older ones), a ``lease_s`` after which a
  router that has not heard from the controller serves only ``fallback``, and that fallback: the
  baseline while a rollout can still fail, the version in charge once it has ended.
* Every :class:`MoveAlias` carries the rollout id and an ``alias_epoch``; any change of intent
  (pause, abort, a newer move) bumps the epoch, so a queued or late move is stale and dropped
  (:func:`alias_move_current`). A rollback that ever issued a move ends only after the controller
  read ``champion`` back from the registry and found it where it was before the rollout.
* A rollback is settled only when every live router acknowledged the baseline-only epoch
  (``Observation.traffic_settled``, from :mod:`deployments.rollout.leases`).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from deployments.contracts import BASELINE, CANDIDATE, Traffic
from deployments.rollout.analysis import Verdict
from deployments.rollout.bandit import ArmRewards, decide, moved, seed_for
from deployments.rollout.compat import describe_schema, new_required_fields
from deployments.rollout.errors import RolloutError
from deployments.rollout.spec import RolloutSpec, parse_spec
from deployments.rollout.stats import TestResult

CHAMPION = "champion"
SYSTEM = "controller"
REGISTRY = "registry"     # paused_by: the registry failed a promotion (retried when it is back)


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
    generation: int = 0              # persisted writes so far: the compare-and-swap fence of the store
    paused_by: str | None = None     # who paused: an actor, or REGISTRY (only that pause retries by itself)
    alias_epoch: int = 0             # bumped by every alias move issued or cancelled; older moves are stale
    alias_target: str | None = None  # the version the current move puts on champion (None: no move wanted)
    alias_pending: bool = False      # the current move was issued and its result has not come back
    champion_seen: str | None = None   # what champion names, as last read or moved by this controller
    champion_verified: bool = False  # rolling back: champion read back on the version it must name
    forced_fields: list[str] = field(default_factory=list)   # new required input fields allowed by the spec
    bandit: dict[str, Any] | None = None   # bandit mode: reward counts per variant, P(best), shares (see _bandit_*)

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
    traffic_settled: bool = False          # every live router acknowledged the current baseline-only epoch
    alias_result: str | None = None        # "ok" or an error line, once a MoveAlias was tried
    alias_epoch: int | None = None         # the alias_epoch of the move that result belongs to (None: current)
    alias_version: str | None = None       # the version that move put on champion
    alias_in_flight: bool = False          # a move is still out (its result will come back)
    registry_healthy: bool | None = None   # probed while paused for the registry
    champion: str | None = None            # champion read back from the registry (rolling back)
    ab_result: TestResult | None = None    # A/B mode: the test on all samples so far
    rewards: dict[str, list[float]] | None = None   # bandit mode: reward samples per variant that arrived
    #                                                  since state.bandit["counted_until"] (up to ``now``)


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
    rollout_id: str = ""
    epoch: int = 0         # the state's alias_epoch when issued: stale (never sent) once that changes


@dataclass(frozen=True)
class RecordEvent:
    event: dict[str, Any]


@dataclass(frozen=True)
class ReleaseWarm:
    variant: str
    version: str


Action = SetTraffic | MoveAlias | RecordEvent | ReleaseWarm


def alias_move_current(state: RolloutState | None, move: MoveAlias) -> bool:
    """True while ``move`` is still what ``state`` wants: same rollout, same alias epoch. Checked right
    before a move is sent, so a move queued before a pause, an abort or a newer move never lands."""
    return (state is not None and move.rollout_id == state.rollout_id and move.epoch == state.alias_epoch
            and state.alias_target == move.version)


def restore_target(state: RolloutState) -> str:
    """The version champion must name after a rollback: what it named when the rollout started."""
    return state.previous_champion or state.baseline_version


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
          previous: RolloutState | None = None, served: dict[str, str] | None = None,
          schemas: tuple[dict[str, str], dict[str, str]] | None = None,
          champion: str | None = None, generation: int = 0) -> tuple[RolloutState, list[Action]]:
    """A new rollout in Pending, before any traffic moves. Refused (409) while another rollout of the
    model is active, when the spec's versions are not the ones the slots serve (``served``), and when
    the candidate requires input fields the baseline does not (``schemas``: baseline's and candidate's
    ``{field: kind}``) unless the spec allows it, which the start event records."""
    if previous is not None and previous.active:
        raise RolloutError(f"rollout {previous.rollout_id} is {previous.phase.value}; abort it or wait for it to end")
    if str(baseline_version) == str(candidate_version):
        raise RolloutError(f"baseline and candidate are the same version ({baseline_version})", 400)
    if served is not None:
        _require_served(spec, str(baseline_version), str(candidate_version), served)
    forced: list[str] = []
    if schemas is not None:
        forced = new_required_fields(*schemas)
        if forced and not spec.allow_new_required_fields:
            raise RolloutError(
                f"candidate v{candidate_version} requires input fields the baseline v{baseline_version} does not: "
                f"{', '.join(forced)}; callers of the baseline do not send them. Baseline schema: "
                f"{describe_schema(schemas[0])}; candidate schema: {describe_schema(schemas[1])}. Set "
                f"allow_new_required_fields: true in the spec to roll out anyway (audited)", 409)
    rid = rollout_id or f"{spec.name or spec.model}-{uuid.uuid4().hex[:8]}"
    state = RolloutState(rollout_id=rid, model=spec.model, spec=spec.model_dump(mode="json"),
                         baseline_version=str(baseline_version), candidate_version=str(candidate_version),
                         created_at=now, updated_at=now, generation=generation,
                         previous_champion=champion, champion_seen=champion, forced_fields=forced,
                         traffic=Traffic(weights={BASELINE: 1.0}, epoch=epoch, rollout_id=rid, lease_s=spec.lease_s))
    why = reason or f"{spec.mode} rollout of v{candidate_version} against v{baseline_version}"
    details = {"forced_new_required_fields": forced} if forced else {}
    if forced:
        why += f"; allowed new required input fields {', '.join(forced)} (allow_new_required_fields)"
    return state, [RecordEvent(_event(None, state, now, "start", actor, why, **details))]


def _require_served(spec: RolloutSpec, baseline: str, candidate: str, served: dict[str, str]) -> None:
    """409 when the slots serve other versions than the spec resolves to: canarying one version and then
    promoting another is the failure this prevents."""
    waiting = [slot for slot in (BASELINE, CANDIDATE) if slot not in served]
    if waiting:
        raise RolloutError(
            f"the app serves no {' and no '.join(waiting)} version yet (not deployed, or still waiting for its "
            f"alias to resolve); the spec needs baseline v{baseline} and candidate v{candidate} in its slots", 409)
    slots = (str(served.get(BASELINE)), str(served.get(CANDIDATE)))
    if slots != (baseline, candidate):
        raise RolloutError(
            f"the spec resolves to baseline v{baseline} ({spec.baseline}) / candidate v{candidate} "
            f"({spec.candidate}), but the app serves baseline v{slots[0]} / candidate v{slots[1]}; redeploy the "
            f"app with those versions (`rayline serve deploy`) or start with a spec that names what it serves", 409)


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
        return new, actions
    if obs.alias_result is not None and not _alias_result_current(state, obs):
        _stale_alias_result(state, new, obs, actions)
        obs = _without_alias_result(obs)
    elif obs.alias_result is not None:
        new.alias_pending = False
        if obs.alias_result == "ok":
            new.champion_seen = state.alias_target
    _TICKS.get(state.phase, _nothing)(state, new, obs, actions)
    return new, actions


def _alias_result_current(state: RolloutState, obs: Observation) -> bool:
    return obs.alias_epoch is None or obs.alias_epoch == state.alias_epoch


def _without_alias_result(obs: Observation) -> Observation:
    return Observation(**{**obs.__dict__, "alias_result": None, "alias_epoch": None, "alias_version": None})


def _stale_alias_result(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    """A move that was already out when the intent changed came back. If it landed, champion moved: what
    the state knows of champion follows, and a rollback will put it back (see ``_tick_rolling_back``)."""
    if obs.alias_result != "ok":
        return
    new.champion_seen = obs.alias_version
    new.champion_verified = False
    actions.append(RecordEvent(_event(old, new, obs.now, "stale_alias_move", SYSTEM,
                                      f"a superseded move (alias epoch {obs.alias_epoch}) put {CHAMPION} on "
                                      f"v{obs.alias_version}", alias_epoch=obs.alias_epoch)))


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
    new.failed_checks = 0
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
    if obs.verdict.status == "pass":
        new.failed_checks = 0   # failed checks count only while consecutive (as Flagger's threshold)
    if spec.mode == "ab":
        _maybe_conclude(old, new, obs, spec, actions)
        return
    if spec.mode == "bandit":
        _bandit_update(old, new, obs, spec, actions)
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
    if obs.verdict is not None and obs.verdict.status == "pass":
        new.failed_checks = 0
    if old.paused_from == Phase.PROMOTING and old.paused_by == REGISTRY and obs.registry_healthy:
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
        _set_traffic(new, {CANDIDATE: 1.0}, actions, fallback=CANDIDATE)   # the candidate is in charge now
        actions.append(RecordEvent(_event(old, new, obs.now, "promote", SYSTEM, new.reason,
                                          warm_until=new.warm_until)))
    else:
        new.phase = Phase.PAUSED
        new.paused_from = Phase.PROMOTING
        new.paused_by = REGISTRY
        new.reason = f"registry unreachable: {obs.alias_result}"
        actions.append(RecordEvent(_event(old, new, obs.now, "pause", SYSTEM, new.reason)))


def _tick_rolling_back(old: RolloutState, new: RolloutState, obs: Observation, actions: list[Action]) -> None:
    """Done when every live router acknowledged baseline-only traffic and, if this rollout ever issued an
    alias move, champion was read back on the version it named before the rollout with no move still out."""
    target = restore_target(old)
    if obs.alias_result is not None and old.alias_target == target:
        if obs.alias_result != "ok":
            actions.append(RecordEvent(_event(old, new, obs.now, "alias_revert_failed", SYSTEM, obs.alias_result)))
        else:
            new.alias_moved = False
            new.champion_verified = not obs.alias_in_flight   # nothing else out that could move it again
            actions.append(RecordEvent(_event(old, new, obs.now, "alias_reverted", SYSTEM,
                                              f"alias {CHAMPION} back on v{target}")))
    if _alias_touched(old) and not obs.alias_in_flight and obs.champion is not None:
        new.champion_seen = obs.champion
        new.champion_verified = obs.champion == target
        if obs.champion != target and not new.alias_pending:
            _issue_move(new, target, actions)
            actions.append(RecordEvent(_event(old, new, obs.now, "alias_restore", SYSTEM,
                                              f"{CHAMPION} names v{obs.champion}; putting it back on v{target}")))
            return
    if new.champion_verified or not _alias_touched(new):
        new.alias_moved = False
    if obs.traffic_settled and not obs.alias_in_flight and (new.champion_verified or not _alias_touched(new)):
        new.phase = Phase.ROLLED_BACK
        new.reason = old.reason
        actions.append(RecordEvent(_event(old, new, obs.now, "rolled_back", SYSTEM,
                                          "every live router acknowledged baseline-only traffic"
                                          + (f"; {CHAMPION} verified on v{target}" if _alias_touched(new) else ""))))


def _alias_touched(state: RolloutState) -> bool:
    """This rollout issued an alias move, or saw champion elsewhere than where it must end."""
    return state.alias_epoch > 0 or (state.champion_seen is not None and state.champion_seen != restore_target(state))


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
    new.paused_by = cmd.actor
    new.reason = cmd.reason or "paused"
    if old.phase == Phase.PROMOTING:
        _cancel_moves(new)   # a paused promotion does not move champion: the queued move is now stale
    actions.append(RecordEvent(_event(old, new, obs.now, cmd.name, cmd.actor, new.reason)))


def _cmd_resume(old: RolloutState, new: RolloutState, obs: Observation, cmd: Command, actions: list[Action]) -> None:
    _require(old, cmd, {Phase.PAUSED, Phase.HELD})
    resume_to = old.paused_from if old.phase == Phase.PAUSED else Phase.PROGRESSING
    new.paused_from = None
    new.paused_by = None
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
    new.paused_by = None
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
        _issue_move(new, restore_target(old), actions)
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
        _set_traffic(new, dict(old.traffic.weights), actions, shadow=old.traffic.shadow,
                     fallback=old.traffic.fallback)
    if old.phase in (Phase.PROGRESSING, Phase.SHADOWING):
        new.step_started_at = obs.now   # requests counted before the restart are gone with the old process
    actions.append(RecordEvent(_event(old, new, obs.now, "restart", cmd.actor,
                                      f"controller restarted; resuming {old.phase.value}", away_s=age)))
    if old.phase == Phase.PROMOTING:
        _issue_move(new, old.candidate_version, actions)   # a newer epoch: a move of the old process is stale
    if old.phase == Phase.ROLLING_BACK:
        new.alias_pending = False         # whatever the old process had out is gone with it
        new.champion_verified = False     # read champion back before calling the rollback done


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
                 shadow: str | None = None, fallback: str = BASELINE) -> None:
    new.traffic = Traffic(weights=weights, shadow=shadow, epoch=new.traffic.epoch + 1, rollout_id=new.rollout_id,
                          lease_s=new.parsed_spec.lease_s, fallback=fallback)
    actions.append(SetTraffic(copy.deepcopy(new.traffic)))


def _issue_move(new: RolloutState, version: str, actions: list[Action]) -> None:
    """A new alias move under a new epoch: every earlier one is stale from now on."""
    new.alias_epoch += 1
    new.alias_target = version
    new.alias_pending = True
    new.champion_verified = False
    actions.append(MoveAlias(new.model, CHAMPION, version, new.rollout_id, new.alias_epoch))


def _cancel_moves(new: RolloutState) -> None:
    """No move wanted any more: a queued one is dropped, one already out is reported as stale."""
    new.alias_epoch += 1
    new.alias_target = None
    new.alias_pending = False


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
    if spec.mode == "bandit":
        _set_traffic(new, _bandit_shares(new, obs.now), actions)
    else:
        _set_traffic(new, weights_for(spec.candidate_percent(index)), actions)
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, reason)))


def _enter_promoting(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                     reason: str, actions: list[Action]) -> None:
    new.phase = Phase.PROMOTING
    new.paused_from = None
    new.paused_by = None
    new.reason = reason
    if new.traffic.weights != {CANDIDATE: 1.0}:
        _set_traffic(new, {CANDIDATE: 1.0}, actions)
    actions.append(RecordEvent(_event(old, new, obs.now, command, actor, reason)))
    _issue_move(new, old.candidate_version, actions)


def _enter_rolling_back(old: RolloutState, new: RolloutState, obs: Observation, actor: str, command: str,
                        reason: str, actions: list[Action]) -> None:
    new.phase = Phase.ROLLING_BACK
    new.paused_from = None
    new.paused_by = None
    new.reason = reason
    new.decided_at = obs.now
    if new.alias_target is not None and new.alias_target != restore_target(old):
        _cancel_moves(new)   # a promotion's move still queued is dropped; one already out is checked afterwards
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


def _bandit_shares(new: RolloutState, now: float) -> dict[str, float]:
    """The bandit's current shares; a bandit that has not begun starts with even shares and no rewards."""
    if new.bandit is None:
        arms = (BASELINE, CANDIDATE)
        new.bandit = {"started_at": now, "counted_until": now, "updates": 0,
                      "arms": {a: ArmRewards().to_dict() for a in arms},
                      "prob_best": {a: 1 / len(arms) for a in arms}, "shares": {a: 1 / len(arms) for a in arms}}
    return dict(new.bandit["shares"])


def _bandit_update(old: RolloutState, new: RolloutState, obs: Observation, spec: RolloutSpec,
                   actions: list[Action]) -> None:
    """Bandit: add the rewards that arrived since the last update to the persisted counts (so the posterior
    covers the whole rollout and survives a restart), then move traffic to the new shares, promote the
    candidate when it wins (and its health is shown, as a canary's last step), or conclude with the baseline
    kept when the baseline wins or time runs out. Called only on an interval whose health did not fail."""
    assert spec.bandit is not None and obs.verdict is not None
    b = spec.bandit
    if obs.rewards is None or old.bandit is None:
        return
    arms = {v: ArmRewards.from_dict(c).add(obs.rewards.get(v, [])) for v, c in old.bandit["arms"].items()}
    updates = old.bandit["updates"] + 1
    d = decide(arms, b.min_share, b.promote_threshold, b.min_samples_per_arm, b.likelihood, b.prior.alpha,
               b.prior.beta, seed=seed_for(old.rollout_id, updates))
    new.bandit = {**old.bandit, "counted_until": obs.now, "updates": updates, "prob_best": d.prob_best,
                  "arms": {v: a.to_dict() for v, a in arms.items()}, "shares": d.shares}
    result = {"prob_best": d.prob_best, "rewards": {v: {"n": a.n, "mean": a.mean} for v, a in arms.items()}}
    timed_out = b.max_duration_s is not None and obs.now - old.bandit["started_at"] >= b.max_duration_s
    if d.winner == CANDIDATE and obs.verdict.status == "pass":
        new.decided_at = obs.now
        new.decision = {"outcome": "candidate_better", "at": obs.now, "bandit": result}
        _enter_promoting(old, new, obs, SYSTEM, "bandit", f"bandit: {d.reason}", actions)
    elif d.winner == BASELINE or timed_out:
        outcome = "baseline_better" if d.winner == BASELINE else "no_winner"
        why = d.reason if d.winner == BASELINE else f"{d.reason}; no promotable winner after {b.max_duration_s:g}s"
        _conclude(old, new, obs, "bandit", f"bandit: {why}; baseline kept",
                  {"outcome": outcome, "at": obs.now, "bandit": result}, actions)
    elif moved(old.traffic.weights, d.shares):
        new.reason = f"bandit: {d.reason}"
        if d.winner == CANDIDATE:
            new.reason += f"; promotion waits for its health to be shown ({obs.verdict.status})"
        _set_traffic(new, dict(d.shares), actions)
        actions.append(RecordEvent(_event(old, new, obs.now, "bandit", SYSTEM, new.reason, **result)))


def _conclude(old: RolloutState, new: RolloutState, obs: Observation, command: str, reason: str,
              decision: dict[str, Any], actions: list[Action]) -> None:
    """End without promoting: all traffic back to the baseline, the decision and its epoch recorded."""
    new.phase = Phase.CONCLUDED
    new.reason = reason
    new.decided_at = obs.now
    _set_traffic(new, {BASELINE: 1.0}, actions)
    new.decision = {**decision, "epoch": new.traffic.epoch}
    actions.append(RecordEvent(_event(old, new, obs.now, command, SYSTEM, reason)))


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
