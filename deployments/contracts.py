"""The data passed between the router (data plane) and the rollout controller (control plane).

Routers ask the controller for the current :class:`Traffic` every ``TRAFFIC_POLL_S``
and push :class:`VariantWindow` deltas of what they served in the same call (``sync``), so
``REPORT_INTERVAL_S`` is the poll period.
Both are plain dataclasses of builtins so they cross Ray handles cheaply and can be
persisted as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BASELINE = "baseline"
CANDIDATE = "candidate"
TRAFFIC_POLL_S = 0.2
REPORT_INTERVAL_S = TRAFFIC_POLL_S   # windows ride on the poll: one handle call, not two

# HTTP headers of the router
HEADER_VARIANT = "x-rayline-variant"          # response: variant served
HEADER_VERSION = "x-rayline-model-version"    # response: registered model version served
HEADER_TRACE = "x-rayline-trace-id"           # response: trace id (also in traceparent)
HEADER_FORCE = "x-rayline-force-variant"      # request: force a variant (testing, QA)
HEADER_STICKY = "x-rayline-user"              # request: sticky assignment key
HEADER_ACTOR = "x-rayline-actor"             # admin request: who, for the audit line (a body "actor" wins)
HEADER_REQUEST_ID = "x-rayline-request-id"    # response: the id to post feedback with (also body "request_id")

# Outcomes joined from feedback (VariantWindow.outcomes keys) → True when higher is better.
OUTCOME_REWARD = "reward"          # the reward a client posts
OUTCOME_CORRECT = "correct"        # 1.0 when the posted label equals the prediction, else 0.0 (classification)
OUTCOME_ABS_ERROR = "abs_error"    # |posted value − prediction| (regression)
OUTCOMES = {OUTCOME_REWARD: True, OUTCOME_CORRECT: True, OUTCOME_ABS_ERROR: False}


@dataclass
class Traffic:
    """Where traffic goes now. ``weights`` sum to 1 over the variants that receive traffic."""

    weights: dict[str, float] = field(default_factory=lambda: {BASELINE: 1.0})
    shadow: str | None = None          # variant that receives a discarded copy of traffic
    epoch: int = 0                     # bumped on every change; routers never apply an older epoch
    rollout_id: str | None = None
    lease_s: float | None = None       # a router that has not heard from the controller this long serves
    fallback: str = BASELINE           # ... only this variant (None: keep the split; static traffic)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Traffic:
        return cls(**data)


@dataclass
class VariantWindow:
    """What one router observed for one variant since its last report."""

    variant: str
    version: str | None
    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    model_metrics: dict[str, list[float]] = field(default_factory=dict)   # name → samples
    shadow: bool = False
    by_key: dict[str, list[float]] = field(default_factory=dict)   # sticky key → [requests, 5xx, latency ms sum]
    # Outcome samples joined from feedback that arrived since the last report (labels and rewards come
    # seconds to days after the response): name ("reward", "correct", "abs_error", ...) → samples.
    outcomes: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantWindow:
        return cls(**data)
