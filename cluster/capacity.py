"""Will a job fit? What it needs against what the Ray cluster has free, and who holds the rest.

Ray Train waits for its worker group's resources and, when they never come, prints its start-up
timeout again and again. Asked before submitting, the same question gets one line with the
figures and the fix (a cluster that cannot grow), or a visible, bounded wait (one with an
autoscaler). The figures come from the dashboard's own answers (cluster status, live actors,
placement groups), so this module is pure: it reads JSON and does arithmetic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cluster.errors import JobError

RESOURCES = ("CPU", "GPU")


class CapacityError(JobError):
    """The job asks for more than the cluster can give it."""


@dataclass(frozen=True)
class Need:
    resources: dict[str, float]
    how: str   # e.g. "2 workers × 1 CPU"


@dataclass(frozen=True)
class Capacity:
    total: dict[str, float]
    used: dict[str, float]
    holders: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # who holds what, biggest first
    autoscaler: bool = False

    def free(self, resource: str) -> float:
        return max(0.0, self.total.get(resource, 0.0) - self.used.get(resource, 0.0))


def training_need(scaling: Any) -> Need:
    """What a Ray Train run's worker group reserves (``train.config.ScalingSection``)."""
    workers, cpus = int(scaling.num_workers), float(scaling.cpus_per_worker)
    gpus = float(scaling.gpus_per_worker or (1.0 if scaling.use_gpu else 0.0))
    need = {"CPU": workers * cpus, **({"GPU": workers * gpus} if gpus else {})}
    how = f"{workers} workers × {_n(cpus)} CPU" + (f" + {_n(gpus)} GPU" if gpus else "")
    return Need(need, how)


def capacity(status: dict[str, Any], actors: Iterable[dict[str, Any]],
             placement_groups: Iterable[dict[str, Any]]) -> Capacity:
    """Totals from the cluster status; use from live actors and placement groups (the status's own
    usage lags by seconds, so the larger of the two counts)."""
    data = status.get("data", status)
    usage = (data.get("clusterStatus") or {}).get("loadMetricsReport", {}).get("usage", {})
    total = {r: float(usage[r][1]) for r in RESOURCES if r in usage}
    reported = {r: float(usage[r][0]) for r in RESOURCES if r in usage}
    held: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for actor in actors:
        if actor.get("state") != "ALIVE" or actor.get("placement_group_id"):
            continue  # an actor in a placement group uses the group's reservation, counted below
        for r, amount in (actor.get("required_resources") or {}).items():
            if r in RESOURCES and amount:
                held[_owner(actor)][r] += float(amount)
    for group in placement_groups:
        if group.get("state") != "CREATED":
            continue
        name = f"placement group {group.get('name') or group.get('placement_group_id', '')[:8]}"
        for bundle in group.get("bundles") or []:
            for r, amount in (bundle.get("unit_resources") or {}).items():
                if r in RESOURCES and amount:
                    held[name][r] += float(amount)
    live = {r: sum(h.get(r, 0.0) for h in held.values()) for r in RESOURCES}
    used = {r: max(reported.get(r, 0.0), live[r]) for r in RESOURCES}
    holders = sorted(((k, dict(v)) for k, v in held.items()), key=lambda kv: -kv[1].get("CPU", 0.0))
    return Capacity(total, used, holders, has_autoscaler(status))


def _owner(actor: dict[str, Any]) -> str:
    """A reader's name for an actor: Serve replicas by app and deployment, others by class."""
    cls = str(actor.get("class_name") or "actor")
    if cls.startswith("ServeReplica:"):
        _, app, deployment = [*cls.split(":", 2), "", ""][:3]
        return f"Serve app {app!r} ({deployment})"
    return f"Serve {cls}" if cls in ("ServeController", "ProxyActor") else cls


def has_autoscaler(status: dict[str, Any]) -> bool:
    """Can the cluster grow? An autoscaler with worker node types, or nodes already on their way."""
    data = status.get("data", status)
    report = (data.get("clusterStatus") or {}).get("autoscalerReport") or {}
    if report.get("legacy") is False or report.get("pendingNodes") or report.get("pendingLaunches"):
        return True
    text = data.get("autoscalingStatus") or ""
    return bool(text.partition("Worker node types:")[2].strip())


def shortfall(need: Need, cap: Capacity) -> str | None:
    """The one line a user needs when ``need`` does not fit in what is free now; None when it fits."""
    short = {r: n for r, n in need.resources.items() if n > cap.free(r) + 1e-9}
    if not short:
        return None
    parts = [f"{_n(n)} {r} ({need.how})" if r == "CPU" else f"{_n(n)} {r}" for r, n in short.items()]
    have = ", ".join(f"{_n(cap.free(r))} of {_n(cap.total.get(r, 0.0))} {r}" for r in short)
    holders = "; ".join(f"{name} {_amounts(res)}" for name, res in cap.holders[:4] if any(r in res for r in short))
    held = f" (held: {holders})" if holders else ""
    return f"it needs {' + '.join(parts)} but the cluster has {have} free{held}"


def _amounts(res: dict[str, float]) -> str:
    return " + ".join(f"{_n(v)} {r}" for r, v in res.items())


def _n(value: float) -> str:
    return f"{value:g}"
