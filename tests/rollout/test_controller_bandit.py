"""Bandit mode through the real controller: rewards reported in the routers' windows move traffic and promote.

Real MLflow (the alias moves), a real controller on a real asyncio loop, its real store. The router is
stood in for by a loop that routes by the controller's weights and reports windows with a ``reward``
outcome per request, as the feedback endpoint will fill them (until then no router does).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from deployments.contracts import BASELINE, CANDIDATE, REPORT_INTERVAL_S, VariantWindow
from deployments.controller import Controller
from tests.rollout.test_controller import model, spec_for, until  # noqa: F401  (model is a fixture)

REWARD_RATE = {BASELINE: 0.1, CANDIDATE: 0.5}


async def rewarded_load(ctl: Controller, stop: asyncio.Event, served: list) -> None:
    rng = random.Random(0)
    while not stop.is_set():
        traffic = await ctl.traffic()
        counts: dict[str, list[float]] = {}
        for _ in range(40):
            variant = rng.choices(list(traffic["weights"]), weights=list(traffic["weights"].values()))[0]
            served.append((traffic["epoch"], variant, traffic["weights"].get(CANDIDATE, 0.0)))
            counts.setdefault(variant, []).append(1.0 if rng.random() < REWARD_RATE[variant] else 0.0)
        windows = [VariantWindow(v, "1" if v == BASELINE else "2", len(r), 0, 0, [5.0] * len(r),
                                 outcomes={"reward": r}).to_dict() for v, r in counts.items()]
        await ctl.report("router-a", windows)
        await asyncio.sleep(REPORT_INTERVAL_S)


@pytest.mark.timeout(60)
def test_a_candidate_with_better_rewards_gets_more_traffic_and_is_promoted_and_champion_moves(tmp_path, model):  # noqa: F811
    name, reg = model
    spec = spec_for(name, mode="bandit", bandit={"min_samples_per_arm": 30, "min_share": 0.1},
                    thresholds={"max_error_rate": 0.02, "min_requests_per_check": 5})   # health shown after ~270

    async def scenario():
        ctl = Controller(tmp_path, name, reg.tracking_uri)
        stop, served = asyncio.Event(), []
        load = asyncio.create_task(rewarded_load(ctl, stop, served))
        await ctl.command("start", {"spec": spec, "actor": "tester"})
        await until(lambda: ctl.state.phase.value in {"succeeded", "rolled_back", "concluded"}, 40)
        stop.set()
        await load
        return ctl, served

    ctl, served = asyncio.run(scenario())
    assert ctl.state.phase.value == "succeeded", ctl.state.reason
    assert reg.by_alias(name, "champion").version == "2"
    assert ctl.state.bandit["arms"][CANDIDATE]["n"] >= 30 and ctl.state.bandit["prob_best"][CANDIDATE] >= 0.95
    persisted = ctl.store.load()
    assert persisted.bandit["arms"] == ctl.state.bandit["arms"]           # the posterior counts are on disk
    events = ctl.store.events(ctl.state.rollout_id)
    assert [e for e in events if e["command"] == "bandit" and e["to"] == "promoting"]
    shares = [w for _, _, w in served]
    assert shares[0] == 0.0 and 0.5 in shares and max(w for w in shares if w < 1.0) > 0.5
