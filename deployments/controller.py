"""The rollout controller: a single-replica Serve deployment around the pure state machine.

Routers poll :meth:`RolloutController.traffic` every 0.2 s and push what they served with
:meth:`RolloutController.report`; an asyncio loop analyses the last interval and feeds the
verdict to :func:`deployments.rollout.state.transition`. Every new state is persisted (with
its events) *before* its actions take effect: traffic changes are visible to routers only
after the save, and the MLflow alias is moved only after ``promoting`` is on disk. On start
the persisted rollout is resumed, or held at baseline if it is too old to trust.

Fencing: every save is a compare-and-swap (:class:`~deployments.rollout.store.RolloutStore`);
a controller that loses one, or sees that another wrote, drops what it was about to do and
reloads. Alias moves run beside the loop, never under its lock, and each is sent only if it is
still current (same rollout, same alias epoch, nobody else wrote) right before its one HTTP
request. Router polls carry the epoch each router applied: a rollback settles on those acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from ray import serve

from cluster import metrics
from cluster.errors import RegistryError
from cluster.files import WriteConflict, join
from cluster.logs import configure_logging
from deployments.contracts import BASELINE, CANDIDATE, Traffic, VariantWindow
from deployments.rollout.analysis import Verdict, WindowLog, aggregate, evaluate, samples, samples_per_key
from deployments.rollout.errors import LostWrite, RolloutError
from deployments.rollout.figures import judge
from deployments.rollout.leases import RouterLeases
from deployments.rollout.quality import QualityResult, gate_applies, unreadable
from deployments.rollout.spec import RolloutSpec, parse_spec, ref_uri
from deployments.rollout.state import (
    CHAMPION,
    REGISTRY,
    Action,
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
)
from deployments.rollout.stats import TestResult, run_test
from deployments.rollout.store import RolloutStore

logger = logging.getLogger(__name__)
audit = logging.getLogger("rayline.audit")

TICK_S = 0.1                 # loop period; analysis runs every spec.interval_s
REGISTRY_PROBE_S = 1.0
ALIAS_HTTP_TIMEOUT_S = 10.0  # one alias-move request; the loop waits a little longer, then calls it failed
REGISTRY_TIMEOUT_S = ALIAS_HTTP_TIMEOUT_S + 5.0
QUALITY_TIMEOUT_S = 15.0     # reading both versions' figures; the router gives a whole start 25 s

ANALYSED = (Phase.PROGRESSING, Phase.SHADOWING, Phase.PAUSED)

ROLLOUT_PHASE = metrics.gauge("rollout_phase", "1 for the current phase of the model's rollout", ["model", "phase"])
CANDIDATE_WEIGHT = metrics.gauge("rollout_candidate_weight", "share of live traffic on the candidate", ["model"])
ROLLBACKS = metrics.counter("rollout_rollbacks_total", "rollouts that ended rolled back", ["model"])


class Controller:
    """Everything but the Serve decorator, so it also runs in a plain asyncio test or a benchmark."""

    def __init__(self, state_dir: str | Path, model_name: str, tracking_uri: str | None = None,
                 versions: dict[str, str] | None = None, rollouts_root: str | None = None) -> None:
        self.model = model_name
        self.tracking_uri = tracking_uri
        self.versions = dict(versions or {})   # variant → registered version the app serves now
        # None: a bare controller (tests, benchmarks) that knows nothing of the slots; a dict from the app:
        # the slots whose reference resolved at build, the others learned from the routers once they load.
        self.slots_known = versions is not None
        self.store = RolloutStore(rollouts_root or join(state_dir, "rollouts"), model_name)
        self.windows = WindowLog()
        self.leases = RouterLeases()
        self.state: RolloutState | None = None
        self.traffic_now = Traffic()
        self.last_verdict: Verdict | None = None
        self.last_ab: TestResult | None = None
        self._registry: Any = None
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task | None = None
        self._last_analysis = 0.0
        self._last_probe = 0.0
        self._pending_alias: list[MoveAlias] = []
        self._alias_results: list[tuple[MoveAlias, str]] = []   # moves that came back, fed to the next tick
        self._alias_tasks: set[asyncio.Task] = set()
        self._resume()

    # ---- start-up ---------------------------------------------------------------------------------------------

    def _resume(self) -> None:
        """Load the persisted rollout; active ones go through the ``restart`` transition (resume or hold)."""
        state = self.store.load()
        if state is None:
            return
        self.state = state
        self.traffic_now = Traffic(weights={BASELINE: 1.0}, epoch=state.traffic.epoch + 1, rollout_id=state.rollout_id)
        if not state.active and self.versions:
            # The app was (re)deployed after the last rollout ended: send everything to the variant
            # that serves the version that rollout left in charge, whatever slot it now occupies.
            self.traffic_now = Traffic(weights={self._variant_serving(_in_charge(state)): 1.0},
                                       epoch=state.traffic.epoch + 1, rollout_id=state.rollout_id)
            self._publish_metrics()
            return
        if state.active or state.phase == Phase.SUCCEEDED:
            new, actions = transition(state, Observation(now=time.time()), Command("restart"))
            try:
                self._persist(new, actions)
            except WriteConflict:
                self._reload("another controller wrote while this one started")
                return
            for action in actions:
                if isinstance(action, SetTraffic):
                    self.traffic_now = action.traffic
            self._pending_alias = [a for a in actions if isinstance(a, MoveAlias)]   # the loop retries them

    def _reload(self, why: str) -> None:
        """Another controller wrote: forget what this one was about to do and follow what is on disk."""
        logger.warning("rollout state of %s changed under this controller (%s); reloading", self.model, why)
        self._pending_alias = []
        state = self.store.load()
        self.state = state
        if state is not None and state.traffic.epoch >= self.traffic_now.epoch:
            self.traffic_now = state.traffic
        self._publish_metrics()

    def _variant_serving(self, version: str) -> str:
        for variant, served in self.versions.items():
            if str(served) == str(version):
                return variant
        return BASELINE

    def _publish_metrics(self) -> None:
        """Rollout phase and candidate share as gauges, for dashboards and the rollback alert."""
        phase = self.state.phase.value if self.state else "none"
        for p in Phase:
            ROLLOUT_PHASE.labels(model=self.model, phase=p.value).set(1.0 if p.value == phase else 0.0)
        CANDIDATE_WEIGHT.labels(model=self.model).set(self.traffic_now.weights.get(CANDIDATE, 0.0))

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    # ---- router-facing ----------------------------------------------------------------------------------------

    async def traffic(self, router_id: str | None = None, applied_epoch: int | None = None,
                      versions: dict[str, str] | None = None) -> dict[str, Any]:
        """The split routers serve; a router's poll is also its acknowledgement of the epoch it applied, and
        tells the versions its model servers loaded (a slot that waited for its alias at build)."""
        self._ensure_loop()
        self._follow_other_writers()   # a stale controller answers with what is stored, never its own old split
        if router_id is not None and applied_epoch is not None:
            self.leases.heard(router_id, applied_epoch, time.time())
        self._learn_versions(versions or {})
        return self.traffic_now.to_dict()

    def _learn_versions(self, seen: dict[str, str]) -> None:
        """Adopt the version a router saw for a slot that had none at build; a resolved slot is pinned for good."""
        for variant, version in seen.items():
            if variant not in self.versions and version:
                self.versions[variant] = str(version)
                logger.warning("model %s: the %s slot now serves version %s", self.model, variant, version)

    async def report(self, router_id: str, windows: list[dict[str, Any]]) -> None:
        self._ensure_loop()
        self.windows.add(time.time(), router_id, [VariantWindow.from_dict(w) for w in windows])

    async def sync(self, router_id: str, applied_epoch: int, versions: dict[str, str],
                   windows: list[dict[str, Any]]) -> dict[str, Any]:
        """A router's one call per poll: ``report`` what it served since its last call, then ``traffic`` (the
        acknowledgement of ``applied_epoch`` and the split to serve). One handle call instead of two, on the
        router's event loop that also serves the requests."""
        if windows:
            await self.report(router_id, windows)
        return await self.traffic(router_id, applied_epoch, versions)

    # ---- admin-facing -----------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        self._ensure_loop()
        return {
            "model": self.model,
            "rollout": self.state.to_dict() if self.state else None,
            "traffic": self.traffic_now.to_dict(),
            "last_analysis": self.last_verdict.to_dict() if self.last_verdict else None,
            "ab": self.last_ab.to_dict() if self.last_ab else None,
            "routers": self.leases.to_dict(time.time()),
        }

    async def history(self) -> dict[str, Any]:
        rollouts = []
        for rid in self.store.rollout_ids():
            st = self.store.load(rid)
            assert st is not None
            rollouts.append({"rollout_id": rid, "phase": st.phase.value, "baseline_version": st.baseline_version,
                             "candidate_version": st.candidate_version, "created_at": st.created_at,
                             "decided_at": st.decided_at, "reason": st.reason, "decision": st.decision,
                             "events": self.store.events(rid)})
        return {"model": self.model, "rollouts": rollouts}

    async def command(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``start`` (body.spec), ``pause``, ``resume``, ``promote`` (body.full), ``abort``, ``rollback``,
        ``report`` (body.rollout_id → state, events and timeline). Raises RolloutError (→ 4xx)."""
        self._ensure_loop()
        body = body or {}
        actor = str(body.get("actor") or "anonymous")
        reason = str(body.get("reason") or "")
        if name == "report":
            rid = body.get("rollout_id") or self.store.current_id()
            if rid is None:
                raise RolloutError(f"no rollouts of {self.model} yet", 404)
            return self.store.bundle(rid)
        async with self._lock:
            if name == "start":
                await self._start(body.get("spec"), actor, reason, override_quality=body.get("override_quality"))
            else:
                if name == "restart":
                    raise RolloutError("restart is the controller's own command", 400)
                self._follow_other_writers()
                if self.state is None:
                    raise RolloutError(f"no rollout of {self.model} to {name}", 404)
                cmd = Command(name, actor, reason, full=bool(body.get("full")))
                new, actions = transition(self.state, Observation(now=time.time()), cmd)
                await self._commit(new, actions)
        return await self.status()

    async def _start(self, spec_data: Any, actor: str, reason: str, override_quality: Any = False) -> None:
        if not isinstance(spec_data, dict):
            raise RolloutError("start needs the rollout spec as a JSON object in 'spec'", 400)
        if not isinstance(override_quality, (bool, type(None))):
            raise RolloutError("override_quality must be true or false", 400)
        spec = parse_spec(spec_data)
        if spec.model != self.model:
            raise RolloutError(f"this controller rolls out {self.model!r}, not {spec.model!r}", 400)
        self._follow_other_writers()
        if self.state is not None and self.state.active:   # checked again in start(); fail before MLflow calls
            start(spec, "0", "1", time.time(), 0, actor, previous=self.state)
        baseline, candidate, champion, schemas, quality = await self._resolve(spec)
        overridden = quality is not None and not quality.passed and bool(override_quality)
        if quality is not None and not quality.passed and not overridden:
            raise RolloutError(f"{quality.reason}. Start with override_quality: true (`rayline canary start "
                               f"--allow-worse-quality`) to roll out anyway (audited)", 409)
        epoch = max(self.traffic_now.epoch, self.state.traffic.epoch if self.state else 0)   # routers never go back
        state, actions = start(spec, baseline, candidate, now=time.time(), epoch=epoch,
                               actor=actor, reason=reason, previous=self.state,
                               served=self.versions if self.slots_known else None,
                               schemas=schemas, champion=champion,
                               generation=self.state.generation if self.state else 0)
        if quality is not None:
            _record_quality(actions, quality, overridden)
        await self._commit(state, actions)
        if overridden:
            assert quality is not None
            audit.info("rollout %s: quality gate overridden by %s: %s", state.rollout_id, actor, quality.reason,
                       extra={"audit": True, "actor": actor, "command": "start", "reason": reason,
                              "rollout_id": state.rollout_id, "model": self.model, "override_quality": True,
                              "quality": quality.details})
        self._last_analysis = 0.0

    async def _resolve(self, spec: RolloutSpec) -> tuple[str, str, str | None, tuple[dict[str, str], dict[str, str]]
                                                         | None, QualityResult | None]:
        """Versions the spec names, champion now, both versions' input schemas (None when unknown) and the
        quality gate's verdict (None when the spec turns it off)."""
        try:
            reg = await self._registry_client()
            base = await asyncio.to_thread(reg.resolve, ref_uri(spec.model, spec.baseline))
            cand = await asyncio.to_thread(reg.resolve, ref_uri(spec.model, spec.candidate))
            champion = await self._read_champion()
        except RegistryError as exc:
            raise RolloutError(f"cannot resolve model versions: {exc}", 503) from None
        schemas = await self._schemas(reg, spec.model, base.version, cand.version)
        return base.version, cand.version, champion, schemas, await self._quality(reg, spec, base, cand)

    async def _quality(self, reg: Any, spec: RolloutSpec, base: Any, cand: Any) -> QualityResult | None:
        """The champion/challenger gate on registered figures, in bounded time; unreadable fails closed."""
        if not gate_applies(spec):
            return None
        try:
            return await asyncio.wait_for(asyncio.to_thread(judge, reg, spec.quality, base, cand), QUALITY_TIMEOUT_S)
        except RegistryError as exc:
            return unreadable(spec.quality, base.version, cand.version, str(exc))
        except TimeoutError:
            return unreadable(spec.quality, base.version, cand.version, f"MLflow did not answer within "
                                                                        f"{QUALITY_TIMEOUT_S:g}s")

    async def _schemas(self, reg: Any, model: str, baseline: str, candidate: str
                       ) -> tuple[dict[str, str], dict[str, str]] | None:
        """Both versions' required input fields; None (and a warning) when either has no readable signature."""
        try:
            base = await asyncio.to_thread(reg.input_schema, model, baseline)
            cand = await asyncio.to_thread(reg.input_schema, model, candidate)
        except RegistryError as exc:
            logger.warning("input schemas of %s v%s/v%s unreadable (%s); inputs not compared", model, baseline,
                           candidate, exc)
            return None
        return (base, cand) if base is not None and cand is not None else None

    async def _read_champion(self) -> str | None:
        """The version ``champion`` names in the registry now (None: no such alias)."""
        reg = await self._registry_client()
        try:
            return (await asyncio.to_thread(reg.by_alias, self.model, CHAMPION)).version
        except RegistryError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise

    def _follow_other_writers(self) -> None:
        """Before acting: if another controller wrote since this one last read or wrote, reload first."""
        if self.store.changed_since_saved():
            self._reload("the stored state changed")

    # ---- the loop ---------------------------------------------------------------------------------------------

    async def _warm_registry(self) -> None:
        """Create the MLflow client (imports take seconds) beside the loop, before a promotion needs it."""
        try:
            await self._registry_client()
        except Exception:
            logger.exception("MLflow client could not be created; promotions will pause until it can")

    async def _run(self) -> None:
        self._warm_task = asyncio.get_running_loop().create_task(self._warm_registry())
        while True:
            try:
                async with self._lock:
                    await self._tick()
            except LostWrite as exc:   # expected while another controller of the model is alive
                logger.info("rollout controller tick: %s", exc)
            except Exception:   # the loop must outlive any one bad tick
                logger.exception("rollout controller tick failed")
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        self._follow_other_writers()
        state = self.state
        if state is None:
            return
        self._start_alias_moves()
        while self._alias_results and self.state is not None:
            move, result = self._alias_results.pop(0)
            follow, more = transition(self.state, Observation(
                now=time.time(), alias_result=result, alias_epoch=move.epoch, alias_version=move.version,
                alias_in_flight=bool(self._alias_tasks)))
            await self._commit(follow, more)
        state = self.state
        assert state is not None
        now = time.time()
        spec = state.parsed_spec
        obs: dict[str, Any] = {"alias_in_flight": bool(self._alias_tasks)}
        if state.phase in ANALYSED and now - self._last_analysis >= spec.interval_s:
            self._last_analysis = now
            obs.update(self._analyse(state, spec, now))
        if state.phase == Phase.ROLLING_BACK:
            obs["traffic_settled"] = self.leases.settled(state.traffic.epoch, state.decided_at or now, now,
                                                         state.traffic.lease_s)
        paused_for_registry = state.phase == Phase.PAUSED and state.paused_by == REGISTRY
        if now - self._last_probe >= REGISTRY_PROBE_S:
            if paused_for_registry:
                self._last_probe = now
                obs["registry_healthy"] = await self._registry_healthy()
            elif state.phase == Phase.ROLLING_BACK and not state.champion_verified and not self._alias_tasks:
                self._last_probe = now
                obs["champion"] = await self._champion_or_none()
        new, actions = transition(state, Observation(now=now, **obs))
        if actions or "verdict" in obs:   # a verdict also persists a heartbeat: the state shows it is watched
            await self._commit(new, actions)

    async def _champion_or_none(self) -> str | None:
        """Champion read back for a rollback; None when the registry cannot say (the rollback then waits)."""
        try:
            return await asyncio.wait_for(self._read_champion(), REGISTRY_TIMEOUT_S) or ""
        except (RegistryError, TimeoutError) as exc:
            logger.warning("cannot read %s@%s back: %s", self.model, CHAMPION, exc)
            return None

    def _analyse(self, state: RolloutState, spec: RolloutSpec, now: float) -> dict[str, Any]:
        start_at = max(now - spec.interval_s, state.step_started_at)
        mirrored = state.traffic.shadow == CANDIDATE   # shadow mode: the candidate is judged on its copies
        verdict = evaluate(spec, aggregate(self.windows.since(start_at), include_shadow=mirrored),
                           aggregate(self.windows.since(state.step_started_at), include_shadow=mirrored))
        self.last_verdict = verdict
        obs: dict[str, Any] = {"verdict": verdict, "step_requests": self.windows.requests_since(
            state.step_started_at, CANDIDATE, shadow=mirrored)}
        if spec.mode == "ab" and spec.ab is not None and state.phase == Phase.PROGRESSING:
            since = self.windows.since(state.step_started_at)
            test, base, cand = _ab_samples(spec, since)
            if len(base) >= 2 and len(cand) >= 2:
                self.last_ab = run_test(test, base, cand, spec.ab.alpha, spec.ab.higher_is_better,
                                        spec.ab.min_effect, state.ab_p_value)
                obs["ab_result"] = self.last_ab
        if spec.bandit is not None and state.bandit is not None and state.phase == Phase.PROGRESSING:
            # only what arrived since the last update: the state adds it to its persisted counts
            fresh = aggregate(self.windows.since(state.bandit["counted_until"], now))
            obs["rewards"] = {v: s.outcomes.get(spec.bandit.reward, []) for v, s in fresh.items()}
        self.store.append_timeline(state.rollout_id, {
            "at": now, "phase": state.phase.value, "step": state.step_index, "epoch": state.traffic.epoch,
            "weights": dict(state.traffic.weights), "shadow": state.traffic.shadow, "status": verdict.status,
            "variants": {v: {"requests": s.requests, "error_rate": s.error_rate, "p50_ms": s.p50_ms,
                             "p99_ms": s.p99_ms, "model_metrics": s.model_metrics}
                         for v, s in verdict.stats.items()},
        })
        return obs

    # ---- persistence and effects ------------------------------------------------------------------------------

    def _persist(self, new: RolloutState, actions: list[Action]) -> None:
        """Compare-and-swap the new state; raises WriteConflict (nothing saved, nothing to act on) if it lost."""
        events = [a.event for a in actions if isinstance(a, RecordEvent)]
        new.generation = (self.state.generation if self.state else new.generation) + 1
        self.store.save(new, events)
        self.state = new
        for event in events:
            if event["to"] == Phase.ROLLED_BACK.value:
                ROLLBACKS.labels(model=self.model).inc()
            audit.info("rollout %s: %s → %s (%s)", event["rollout_id"], event["from"], event["to"], event["reason"],
                       extra={"audit": True, "actor": event["actor"], "command": event["command"],
                              "reason": event["reason"], "rollout_id": event["rollout_id"], "model": self.model,
                              "from_phase": event["from"], "to_phase": event["to"], "epoch": event["epoch"],
                              "weights": event["weights"]})
        self._publish_metrics()  # the phase gauge follows every persisted change, not only traffic changes

    async def _commit(self, new: RolloutState, actions: list[Action]) -> None:
        """Persist first, then act. A lost write acts on nothing: reload and tell the caller (409)."""
        try:
            self._persist(new, actions)
        except WriteConflict as exc:
            self._reload(str(exc))
            raise LostWrite("another controller changed this rollout at the same moment; reloaded its state, "
                            "retry the command") from None
        await self._execute(actions)

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SetTraffic):
                self.traffic_now = action.traffic
                self._publish_metrics()
            elif isinstance(action, ReleaseWarm):
                logger.info("v%s of %s no longer needs to be kept warm", action.version, self.model,
                            extra={"variant": action.variant, "model": self.model})
        # MLflow calls can take seconds: the loop does them, so commands answer as soon as the state is saved
        self._pending_alias += [a for a in actions if isinstance(a, MoveAlias)]

    def _start_alias_moves(self) -> None:
        """Send queued moves that are still current, each in its own task; stale ones are dropped here."""
        pending, self._pending_alias = self._pending_alias, []
        for move in pending:
            if not alias_move_current(self.state, move):
                logger.info("dropped a stale alias move %s@%s → v%s (alias epoch %d)", move.model, move.alias,
                            move.version, move.epoch)
                continue
            task = asyncio.get_running_loop().create_task(self._alias_task(move))
            self._alias_tasks.add(task)

    async def _alias_task(self, move: MoveAlias) -> None:
        try:
            result = await self._move_alias(move)
            self._alias_results.append((move, result))
        finally:
            self._alias_tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    def _still_wanted(self, move: MoveAlias) -> bool:
        """Checked in the mover's thread right before it sends: same rollout and alias epoch, no other writer."""
        return alias_move_current(self.state, move) and not self.store.changed_since_saved()

    # ---- registry ---------------------------------------------------------------------------------------------

    async def _registry_client(self) -> Any:
        if self._registry is None:
            from cluster.registry import Registry
            from cluster.settings import load_settings

            overrides = {"mlflow_tracking_uri": self.tracking_uri} if self.tracking_uri else {}
            settings = load_settings(**overrides)
            self._registry = await asyncio.to_thread(Registry, settings)
        return self._registry

    async def _registry_healthy(self) -> bool:
        reg = await self._registry_client()
        return await asyncio.to_thread(reg.healthy)

    async def _move_alias(self, action: MoveAlias) -> str:
        """"ok", or why the alias could not be moved (the state machine then pauses instead of promoting)."""
        try:
            reg = await self._registry_client()
            if not await asyncio.to_thread(reg.healthy):
                return f"MLflow at {reg.tracking_uri} is not reachable"
            sent = await asyncio.wait_for(asyncio.to_thread(
                reg.set_alias_fenced, action.model, action.alias, action.version,
                lambda: self._still_wanted(action), ALIAS_HTTP_TIMEOUT_S), REGISTRY_TIMEOUT_S)
            return "ok" if sent else "superseded before it was sent"
        except RegistryError as exc:
            return str(exc)
        except TimeoutError:
            return f"MLflow did not answer within {REGISTRY_TIMEOUT_S:g}s"


def _ab_samples(spec: RolloutSpec, windows: list[VariantWindow]) -> tuple[str, list[float], list[float]]:
    """(test, baseline samples, candidate samples): per sticky key when assignment is sticky, with the two-
    proportion test (which assumes independent requests) replaced by Welch's on the users' success rates."""
    assert spec.ab is not None
    base, cand = (samples_per_key(windows, v, spec.ab.metric) for v in (BASELINE, CANDIDATE))
    if base is not None and cand is not None:
        return ("welch" if spec.ab.test == "two_proportion" else spec.ab.test), base, cand
    return spec.ab.test, samples(windows, BASELINE, spec.ab.metric), samples(windows, CANDIDATE, spec.ab.metric)


def _record_quality(actions: list[Action], quality: QualityResult, overridden: bool) -> None:
    """The gate's figures go into the start event; an override also into its reason (and so the audit line)."""
    for action in actions:
        if isinstance(action, RecordEvent) and action.event["command"] == "start":
            action.event["quality"] = {**quality.details, "overridden": overridden}
            if overridden:
                action.event["reason"] += f"; quality gate overridden (override_quality): {quality.reason}"
            elif not quality.measured:
                action.event["reason"] += f"; {quality.reason}"


def _in_charge(state: RolloutState) -> str:
    """The version serving all traffic once a rollout has ended."""
    return state.candidate_version if state.phase == Phase.SUCCEEDED else state.baseline_version


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05},
    logging_config={"log_level": "INFO", "enable_access_log": False},
)
class RolloutController(Controller):
    """The Serve deployment: exactly one replica owns a model's rollout state."""

    def __init__(self, state_dir: str, model_name: str, tracking_uri: str | None = None,
                 versions: dict[str, str] | None = None, rollouts_root: str | None = None) -> None:
        configure_logging("rollout-controller", fmt="json")   # audit lines reach the replica's Serve log file
        super().__init__(state_dir, model_name, tracking_uri, versions, rollouts_root)
        with contextlib.suppress(RuntimeError):   # no running loop yet: the first router poll starts it
            self._ensure_loop()
