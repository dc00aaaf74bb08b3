"""After a rollout has ended, a redeployed app's traffic follows the version that rollout left in charge.

Pure controller logic on a real on-disk store (no Serve needed): the serving app passes the
versions it deployed; the controller must never send traffic to a new candidate before a
rollout of it starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deployments.contracts import BASELINE, CANDIDATE
from deployments.controller import Controller
from deployments.rollout.spec import parse_spec
from deployments.rollout.state import Phase, start
from deployments.rollout.store import RolloutStore


def _ended(tmp_path: Path, phase: Phase) -> None:
    spec = parse_spec({"model": "m", "candidate": "challenger", "steps": [50, 100], "interval_s": 1})
    state, _ = start(spec, "1", "2", now=0.0, epoch=1, actor="test")
    RolloutStore(tmp_path / "rollouts", "m").save(dataclasses.replace(state, phase=phase), [])


@pytest.mark.parametrize(
    ("phase", "deployed", "expected"),
    [
        # promoted v2, app redeployed with v2 as baseline and a new candidate v3: all on the baseline
        (Phase.SUCCEEDED, {BASELINE: "2", CANDIDATE: "3"}, BASELINE),
        # promoted v2, app not redeployed yet (v2 still in the candidate slot): all on the candidate
        (Phase.SUCCEEDED, {BASELINE: "1", CANDIDATE: "2"}, CANDIDATE),
        # rolled back: v1 stays in charge, a new candidate gets nothing before its rollout starts
        (Phase.ROLLED_BACK, {BASELINE: "1", CANDIDATE: "3"}, BASELINE),
    ],
)
def test_traffic_after_an_ended_rollout_goes_to_the_version_in_charge(
    tmp_path: Path, phase: Phase, deployed: dict[str, str], expected: str
) -> None:
    _ended(tmp_path, phase)
    controller = Controller(tmp_path, "m", versions=deployed)
    assert controller.traffic_now.weights == {expected: 1.0}
