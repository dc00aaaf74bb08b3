"""Builders for rollout unit tests: specs, verdicts and windows made from plain numbers."""

from __future__ import annotations

from typing import Any

from deployments.contracts import BASELINE, CANDIDATE, VariantWindow
from deployments.rollout.analysis import aggregate, evaluate
from deployments.rollout.spec import RolloutSpec, parse_spec
from deployments.rollout.state import Observation, RolloutState, start, transition


def make_spec(**overrides: Any) -> RolloutSpec:
    data: dict[str, Any] = {"model": "iris", "baseline": "champion", "candidate": "2", "steps": [25, 50, 100],
                            "interval_s": 1, "min_requests": 20, "failed_checks_before_rollback": 2,
                            "thresholds": {"max_error_rate": 0.05, "min_requests_per_check": 10}}
    data.update(overrides)
    return parse_spec(data)


def windows(cand_requests: int, cand_errors: int = 0, base_requests: int = 100, base_errors: int = 0,
            cand_latency: float = 10.0, base_latency: float = 10.0) -> list[VariantWindow]:
    return [VariantWindow(BASELINE, "1", base_requests, 0, base_errors, [base_latency] * base_requests),
            VariantWindow(CANDIDATE, "2", cand_requests, 0, cand_errors, [cand_latency] * cand_requests)]


def verdict(spec: RolloutSpec, cand_requests: int = 200, cand_errors: int = 0, **kw: Any):
    return evaluate(spec, aggregate(windows(cand_requests, cand_errors, **kw)))


def started(spec: RolloutSpec | None = None, now: float = 100.0) -> RolloutState:
    spec = spec or make_spec()
    state, _ = start(spec, "1", "2", now=now, epoch=0, actor="alice")
    return state


def progressing(spec: RolloutSpec | None = None, now: float = 100.0) -> RolloutState:
    state, _ = transition(started(spec, now), Observation(now=now))
    return state
