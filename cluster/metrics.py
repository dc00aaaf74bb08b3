"""One metrics registry on ``prometheus_client`` that every component registers with.

Registration is get-or-create, so a module imported twice (tests, Ray workers, Serve
replicas re-running constructors) gets the existing metric instead of a duplicate-name
error. All rayline metric names start with ``rayline_``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "rayline_"
REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_lock = threading.Lock()
_metrics: dict[str, Counter | Gauge | Histogram] = {}


def _full(name: str) -> str:
    return name if name.startswith(PREFIX) else PREFIX + name


def _get_or_create(kind: type, name: str, doc: str, labels: Sequence[str], **kwargs: object):
    full = _full(name)
    with _lock:
        metric = _metrics.get(full)
        if metric is None:
            metric = kind(full, doc, list(labels), registry=REGISTRY, **kwargs)
            _metrics[full] = metric
        elif not isinstance(metric, kind):
            raise TypeError(f"metric {full} already registered as {type(metric).__name__}")
        return metric


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    return _get_or_create(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    return _get_or_create(Gauge, name, doc, labels)


def histogram(
    name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    return _get_or_create(Histogram, name, doc, labels, buckets=tuple(buckets))


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus text format, with its content type (for an HTTP handler)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Expose the registry on ``http://addr:port/metrics`` from a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)
