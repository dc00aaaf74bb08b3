"""The rollout fences of ``test_state_properties`` in bandit mode, plus the bandit's own invariants.

The same world (real store, real ``transition``, routers, registry, restarts, alias moves landing and
timing out) with a bandit spec and rewards on every analysed tick. One controller here (a restart
replaces it): the bandit adds nothing to the two-controller races, which the canary world explores.
Invariants added: every version keeps at least ``min_share`` while the bandit runs, shares sum to 1,
and the persisted reward counts never go backwards (a restart or a lost write never loses counted rewards).
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from deployments.contracts import BASELINE, CANDIDATE
from deployments.rollout.state import Phase
from deployments.rollout.store import RolloutStore
from tests.rollout.helpers import make_spec
from tests.rollout.test_state_properties import Ctl, World

BANDIT = make_spec(mode="bandit", min_requests=1, failed_checks_before_rollback=2, stale_after_s=30,
                   bandit={"min_share": 0.1, "min_samples_per_arm": 40, "promote_threshold": 0.95})
RATES = {BASELINE: 0.3, CANDIDATE: 0.5}


class BanditWorld(World):
    spec = BANDIT

    def __init__(self) -> None:
        super().__init__()
        self.ctls = [self.ctls[0], self.ctls[0]]
        self.counted: dict[str, int] = {}

    def rewards(self, state) -> dict:
        rng = random.Random(self.now)
        return {"rewards": {v: [float(rng.random() < p) for _ in range(10)] for v, p in RATES.items()}}

    @rule(which=st.integers(0, 1))
    def controller_restarts(self, which: int) -> None:
        ctl = Ctl(self.root, self)
        self.ctls = [ctl, ctl]

    @invariant()
    def every_version_keeps_its_floor_while_the_bandit_runs_and_counted_rewards_never_go_back(self) -> None:
        persisted = RolloutStore(self.root, "iris").load()
        if persisted is None or persisted.bandit is None:
            assert not any(self.counted.values()), "counted rewards were dropped"
            return
        if persisted.phase == Phase.PROGRESSING:
            weights = persisted.traffic.weights
            assert abs(sum(weights.values()) - 1.0) < 1e-9, weights
            assert min(weights.get(v, 0.0) for v in RATES) >= BANDIT.bandit.min_share - 1e-9, weights
        for variant, counts in persisted.bandit["arms"].items():
            assert counts["n"] >= self.counted.get(variant, 0), (variant, counts, self.counted)
            self.counted[variant] = counts["n"]


BanditWorld.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_bandit_fences_and_floors_hold_under_any_interleaving = BanditWorld.TestCase
