"""Per-variant serving metrics: Prometheus series for dashboards, windows for the rollout controller.

Every request the router serves is recorded once, here. It goes two ways:

* to Prometheus through the one registry (``cluster.metrics``): request counts by status
  code, a latency histogram and the model's own metric, labelled by variant and version;
* into a :class:`WindowRecorder` that the router drains on every controller poll (``REPORT_INTERVAL_S``) into
  :class:`~deployments.contracts.VariantWindow` deltas for the controller, which judges a
  canary on seconds of data rather than a scrape interval.

:class:`RollingWindow` keeps those deltas for a horizon and summarises them, for readers
that want "the last N seconds" (the static-traffic stand-in for the controller, tests).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from cluster import metrics
from deployments.contracts import VariantWindow

REQUESTS = metrics.counter("serve_requests_total", "Predict requests by variant, version and status code",
                           ("variant", "version", "code"))
SHADOW_REQUESTS = metrics.counter("serve_shadow_requests_total", "Shadow copies sent to a variant (discarded)",
                                  ("variant", "version", "code"))
LATENCY = metrics.histogram("serve_request_latency_seconds", "Router-observed predict latency",
                            ("variant", "version"))
MODEL_METRIC = metrics.gauge("serve_model_metric", "Latest per-request value of a metric the model reports",
                             ("variant", "version", "metric"))


class WindowRecorder:
    """Accumulates what one router served per (variant, shadow) until the next ``drain``."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, bool], VariantWindow] = {}

    def record(self, variant: str, version: str | None, status: int, latency_s: float,
               model_metrics: dict[str, float] | None = None, shadow: bool = False, key: str | None = None) -> None:
        labels = {"variant": variant, "version": version or ""}
        (SHADOW_REQUESTS if shadow else REQUESTS).labels(**labels, code=str(status)).inc()
        if not shadow:
            LATENCY.labels(**labels).observe(latency_s)
        window = self._pending.get((variant, shadow))
        if window is None:
            window = self._pending[(variant, shadow)] = VariantWindow(variant=variant, version=version, shadow=shadow)
        window.version = version or window.version
        window.requests += 1
        if 400 <= status < 500:
            window.errors_4xx += 1
        elif status >= 500:
            window.errors_5xx += 1
        window.latencies_ms.append(latency_s * 1000.0)
        if key is not None:   # sticky assignment: per-user sums, so an A/B test can count users, not requests
            per_key = window.by_key.setdefault(key, [0, 0, 0.0])
            per_key[0] += 1
            per_key[1] += status >= 500
            per_key[2] += latency_s * 1000.0
        for name, value in (model_metrics or {}).items():
            window.model_metrics.setdefault(name, []).append(value)
            MODEL_METRIC.labels(**labels, metric=name).set(value)

    def record_outcomes(self, variant: str, version: str | None, outcomes: dict[str, float]) -> None:
        """Outcome samples joined from feedback, for the next report (Prometheus counts them in the feedback module)."""
        window = self._pending.get((variant, False))
        if window is None:
            window = self._pending[(variant, False)] = VariantWindow(variant=variant, version=version)
        window.version = version or window.version
        for name, value in outcomes.items():
            window.outcomes.setdefault(name, []).append(value)

    def drain(self) -> list[VariantWindow]:
        """What was served since the last drain (and forget it)."""
        out, self._pending = list(self._pending.values()), {}
        return out


class RollingWindow:
    """Reported windows kept for ``horizon_s``, summarised per variant (shadow copies apart)."""

    def __init__(self, horizon_s: float = 60.0) -> None:
        self.horizon_s = horizon_s
        self._items: deque[tuple[float, VariantWindow]] = deque()

    def add(self, windows: Iterable[VariantWindow | dict[str, Any]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for w in windows:
            self._items.append((now, w if isinstance(w, VariantWindow) else VariantWindow.from_dict(w)))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.horizon_s:
            self._items.popleft()

    def summary(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """``{"candidate": {...}, "candidate/shadow": {...}}``: requests, errors, p50/p99 ms, metric/outcome means."""
        self._trim(time.monotonic() if now is None else now)
        merged: dict[str, VariantWindow] = {}
        for _, w in self._items:
            key = f"{w.variant}/shadow" if w.shadow else w.variant
            into = merged.setdefault(key, VariantWindow(variant=w.variant, version=w.version, shadow=w.shadow))
            into.requests += w.requests
            into.errors_4xx += w.errors_4xx
            into.errors_5xx += w.errors_5xx
            into.latencies_ms += w.latencies_ms
            for name, samples in w.model_metrics.items():
                into.model_metrics.setdefault(name, []).extend(samples)
            for name, samples in w.outcomes.items():
                into.outcomes.setdefault(name, []).extend(samples)
        return {key: _summarise(w) for key, w in merged.items()}


def _summarise(w: VariantWindow) -> dict[str, Any]:
    lat = np.asarray(w.latencies_ms) if w.latencies_ms else None
    return {
        "variant": w.variant, "version": w.version, "shadow": w.shadow, "requests": w.requests,
        "errors_4xx": w.errors_4xx, "errors_5xx": w.errors_5xx,
        "error_rate": w.errors_5xx / w.requests if w.requests else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat is not None else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat is not None else None,
        "model_metrics": {n: float(np.mean(v)) for n, v in w.model_metrics.items() if v},
        "outcomes": {n: {"n": len(v), "mean": float(np.mean(v))} for n, v in w.outcomes.items() if v},
    }
