"""The controller's I/O around the state machine, on a real MLflow server and a real asyncio loop.

Routers are stood in for by a loop that reports windows the way ``deployments.router`` does
(the Serve end-to-end tests live in ``tests/serve/test_rollout*.py``); MLflow is real, so
alias moves and an unreachable registry are real.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from deployments.contracts import BASELINE, CANDIDATE, REPORT_INTERVAL_S, VariantWindow
from deployments.controller import Controller
from deployments.rollout.errors import RolloutError
from tests.serve.helpers import quality_tags


@pytest.fixture
def model(settings):
    """A registered model with versions 1 (champion) and 2, made through the real registry."""
    from cluster.registry import Registry

    reg = Registry(settings)
    name = f"ctl-{uuid.uuid4().hex[:6]}"
    reg.client.create_registered_model(name)
    run = reg.client.create_run(reg.ensure_experiment())
    for _ in range(2):   # equal validation figures on one dataset version: the quality gate lets v2 through
        reg.client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                        tags=quality_tags())
    reg.set_alias(name, "champion", "1")
    return name, reg


def spec_for(name: str, **kw):
    return {"model": name, "baseline": "champion", "candidate": "2", "steps": [25, 50, 100], "interval_s": 1,
            "min_requests": 10, "failed_checks_before_rollback": 2, "keep_old_warm_s": 60,
            "thresholds": {"max_error_rate": 0.05, "min_requests_per_check": 5}, **kw}


async def serve_load(ctl: Controller, candidate_failure: float, stop: asyncio.Event, served: list) -> None:
    """Route 40 requests per report by the controller's weights (and mirror them to its shadow variant) and
    report them, like a router does. ``served`` gets (epoch, variant) of what callers were answered by."""
    rng = random.Random(0)
    while not stop.is_set():
        traffic = await ctl.traffic()
        counts = {(v, shadow): [0, 0] for v in (BASELINE, CANDIDATE) for shadow in (False, True)}
        for _ in range(40):
            variant = rng.choices(list(traffic["weights"]), weights=list(traffic["weights"].values()))[0]
            served.append((traffic["epoch"], variant))
            copies = [(variant, False)] + ([(traffic["shadow"], True)] if traffic["shadow"] else [])
            for target, shadow in copies:
                counts[(target, shadow)][0] += 1
                counts[(target, shadow)][1] += target == CANDIDATE and rng.random() < candidate_failure
        windows = [VariantWindow(v, "1" if v == BASELINE else "2", n, 0, e, [5.0] * n, shadow=shadow).to_dict()
                   for (v, shadow), (n, e) in counts.items() if n]
        await ctl.report("router-a", windows)
        await asyncio.sleep(REPORT_INTERVAL_S)


async def until(predicate, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def run_rollout(ctl: Controller, spec: dict, failure: float, done_phases: set[str]) -> list:
    stop, served = asyncio.Event(), []
    load = asyncio.create_task(serve_load(ctl, failure, stop, served))
    await ctl.command("start", {"spec": spec, "actor": "tester"})
    await until(lambda: ctl.state.phase.value in done_phases, 40)
    await asyncio.sleep(0.6)
    stop.set()
    await load
    return served


def test_a_router_sync_reports_its_windows_and_acknowledges_its_epoch_in_one_call(tmp_path):
    """The router's one call per poll: the windows land in the log, the epoch in the leases, the split comes back."""
    async def scenario():
        ctl = Controller(tmp_path, "m", versions={BASELINE: "1"})
        window = VariantWindow(BASELINE, "1", 3, 0, 1, [5.0, 6.0, 7.0]).to_dict()
        traffic = await ctl.sync("router-a", 4, {BASELINE: "1"}, [window])
        empty = await ctl.sync("router-b", 4, {BASELINE: "1"}, [])
        return ctl, traffic, empty

    ctl, traffic, empty = asyncio.run(scenario())
    assert traffic == empty == ctl.traffic_now.to_dict()
    assert ctl.windows.requests_since(0.0, BASELINE) == 3
    assert {r: seen["epoch"] for r, seen in ctl.leases.to_dict(0.0).items()} == {"router-a": 4, "router-b": 4}


def test_a_healthy_candidate_is_promoted_step_by_step_and_the_champion_alias_moves(tmp_path, model):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        await run_rollout(ctl, spec_for(name), 0.0, {"succeeded", "rolled_back"})
        return ctl

    ctl = asyncio.run(scenario())
    assert ctl.state.phase.value == "succeeded"
    assert reg.by_alias(name, "champion").version == "2"
    steps = [e["weights"].get(CANDIDATE) for e in ctl.store.events(ctl.state.rollout_id) if e["to"] == "progressing"]
    assert steps == [0.25, 0.5, 1.0]
    assert ctl.store.timeline(ctl.state.rollout_id)


def test_a_failing_candidate_is_rolled_back_and_gets_no_traffic_after_the_decision_epoch(tmp_path, model):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        served = await run_rollout(ctl, spec_for(name), 0.2, {"rolled_back", "succeeded"})
        return ctl, served

    ctl, served = asyncio.run(scenario())
    assert ctl.state.phase.value == "rolled_back"
    decision = ctl.state.decision
    assert "error rate" in decision["reason"]
    assert not [e for e, v in served if e >= decision["epoch"] and v == CANDIDATE]
    assert reg.by_alias(name, "champion").version == "1"


def test_a_healthy_candidate_in_shadow_concludes_on_mirrored_traffic_alone_and_the_alias_stays(tmp_path, model):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        spec = spec_for(name, mode="shadow", shadow={"passing_checks": 2})
        served = await run_rollout(ctl, spec, 0.0, {"concluded", "rolled_back"})
        return ctl, served

    ctl, served = asyncio.run(scenario())
    assert ctl.state.phase.value == "concluded" and ctl.state.decision["outcome"] == "shadow_passed"
    assert {v for _, v in served} == {BASELINE}
    assert ctl.store.timeline(ctl.state.rollout_id)[-1]["variants"]["candidate"]["requests"] > 0
    assert reg.by_alias(name, "champion").version == "1"


def test_a_shadow_run_that_passes_can_go_on_into_the_canary_steps_and_promote(tmp_path, model):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        spec = spec_for(name, mode="shadow", steps=[50, 100], shadow={"passing_checks": 1, "then": "canary"})
        await run_rollout(ctl, spec, 0.0, {"succeeded", "rolled_back", "concluded"})
        return ctl

    ctl = asyncio.run(scenario())
    assert ctl.state.phase.value == "succeeded"
    phases = [e["to"] for e in ctl.store.events(ctl.state.rollout_id)]
    assert phases.index("shadowing") < phases.index("progressing")
    assert reg.by_alias(name, "champion").version == "2"


def test_a_restarted_controller_resumes_the_persisted_step_with_a_newer_epoch(tmp_path, model):
    name, reg = model

    async def first():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        await ctl.command("start", {"spec": spec_for(name, min_requests=10_000), "actor": "tester"})
        await until(lambda: ctl.state.phase.value == "progressing")
        return ctl.traffic_now

    async def second():
        return Controller(tmp_path, name, reg.tracking_uri)

    before = asyncio.run(first())
    ctl = asyncio.run(second())
    assert ctl.state.phase.value == "progressing"
    assert ctl.traffic_now.weights == before.weights and ctl.traffic_now.epoch > before.epoch
    assert ctl.store.events(ctl.state.rollout_id)[-1]["command"] == "restart"


def test_a_controller_back_after_the_stale_limit_holds_all_traffic_at_baseline(tmp_path, model):
    name, reg = model

    async def first():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        await ctl.command("start", {"spec": spec_for(name, stale_after_s=0.5, min_requests=10_000)})
        await until(lambda: ctl.state.phase.value == "progressing")

    asyncio.run(first())
    import time

    time.sleep(1.0)
    ctl = Controller(tmp_path, name, reg.tracking_uri)
    assert ctl.state.phase.value == "held" and ctl.traffic_now.weights == {BASELINE: 1.0}


def test_commands_are_refused_with_conflict_in_the_wrong_state_and_start_needs_resolvable_versions(tmp_path, model):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        with pytest.raises(RolloutError) as no_rollout:
            await ctl.command("pause", {})
        with pytest.raises(RolloutError) as missing:
            await ctl.command("start", {"spec": spec_for(name, candidate="9")})
        await ctl.command("start", {"spec": spec_for(name, min_requests=10_000)})
        with pytest.raises(RolloutError) as twice:
            await ctl.command("start", {"spec": spec_for(name)})
        return no_rollout.value, missing.value, twice.value

    no_rollout, missing, twice = asyncio.run(scenario())
    assert no_rollout.status_code == 404 and missing.status_code == 503 and twice.status_code == 409


def test_mlflow_unreachable_at_promotion_pauses_and_promotes_once_it_is_back(tmp_path, model, mlflow_server):
    name, reg = model

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        await ctl.command("start", {"spec": spec_for(name, min_requests=10_000)})
        await until(lambda: ctl.state.phase.value == "progressing")
        mlflow_server.stop()
        try:
            await ctl.command("promote", {"full": True, "actor": "tester"})
            await until(lambda: ctl.state.phase.value == "paused", 60)
            paused = (ctl.state.reason, dict(ctl.traffic_now.weights))
        finally:
            await asyncio.to_thread(mlflow_server.start)
        await until(lambda: ctl.state.phase.value == "succeeded", 60)
        return paused

    reason, weights = asyncio.run(scenario())
    assert "registry unreachable" in reason and weights == {CANDIDATE: 1.0}
    assert reg.by_alias(name, "champion").version == "2"
