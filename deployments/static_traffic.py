"""A fixed traffic split that stands in for the rollout controller when none is deployed.

It answers the router with the same calls (``traffic``, ``report``, ``status``) so the router
has one code path: plain serving, a hand-set A/B split or shadow test without a rollout,
and the data-plane tests all go through it. Reports are kept in a rolling window that
``status`` summarises; rollout commands are refused with a 409.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.contracts import Traffic
from deployments.rollout.errors import RolloutError
from deployments.window import RollingWindow


def normalise(weights: dict[str, float], variants: list[str]) -> dict[str, float]:
    """Weights over ``variants`` scaled to sum to 1 (ValueError when that is impossible)."""
    unknown = set(weights) - set(variants)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; serving {variants}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights.values())
    return {v: w / total for v, w in weights.items() if w > 0}


@serve.deployment(name="traffic", num_replicas=1, ray_actor_options={"num_cpus": 0.05})
class StaticTraffic:
    def __init__(self, variants: list[str], weights: dict[str, float] | None = None,
                 shadow: str | None = None) -> None:
        self.variants = variants
        self._traffic = Traffic(weights=normalise(weights or {variants[0]: 1.0}, variants), shadow=shadow)
        self.window = RollingWindow(horizon_s=60.0)
        self.reports = 0

    def traffic(self) -> dict[str, Any]:
        return self._traffic.to_dict()

    def report(self, router_id: str, windows: list[dict[str, Any]]) -> None:
        self.reports += 1
        self.window.add(windows)

    def sync(self, router_id: str, applied_epoch: int, versions: dict[str, str],
             windows: list[dict[str, Any]]) -> dict[str, Any]:
        """The router's one call per poll (as ``RolloutController.sync``): its windows in, the split out."""
        if windows:
            self.report(router_id, windows)
        return self.traffic()

    def set_traffic(self, weights: dict[str, float], shadow: str | None = None) -> dict[str, Any]:
        if shadow is not None and shadow not in self.variants:
            raise ValueError(f"shadow must be one of {self.variants}, got {shadow!r}")
        self._traffic = Traffic(weights=normalise(weights, self.variants), shadow=shadow,
                                epoch=self._traffic.epoch + 1)
        return self.traffic()

    def status(self) -> dict[str, Any]:
        return {"mode": "static", "traffic": self.traffic(), "reports": self.reports,
                "windows": self.window.summary()}

    def history(self) -> list[dict[str, Any]]:
        return []

    def command(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        raise RolloutError("no rollout controller in this app (deployed with controller: false)", status_code=409)
