"""One metrics registry that every component registers with.

Each metric is recorded twice, through one API:

* in a process-local ``prometheus_client`` registry (``exposition()`` / ``serve_metrics()``),
  which in-process readers and local ``/metrics`` endpoints use; and
* when the process runs inside Ray (a Serve replica, a Train worker, a job driver), through
  ``ray.util.metrics``, which Ray's per-node metrics agent exports on the metrics port
  (8080, what the Helm chart's PodMonitors scrape). Ray prefixes those names with ``ray_``:
  ``rayline_serve_requests_total`` is scraped as ``ray_rayline_serve_requests_total``,
  summed over every replica on the node, which a per-process endpoint cannot do.

Registration is get-or-create, so a module imported twice (tests, Ray workers, Serve
replicas re-running constructors) gets the existing metric instead of a duplicate-name
error. All rayline metric names start with ``rayline_``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "rayline_"
RAY_EXPORT_PREFIX = "ray_"  # what Ray's exporter puts in front of our names
REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_lock = threading.Lock()
_metrics: dict[str, Metric] = {}


def _in_ray() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return False


class Metric:
    """A metric with Prometheus-client semantics (``labels(...).inc/observe/set``) and a Ray mirror."""

    def __init__(self, kind: str, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = ()) -> None:
        self.kind = kind
        self.name = name
        self.doc = doc
        self.label_names = tuple(labels)
        self.buckets = tuple(buckets)
        cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind]
        extra: dict[str, Any] = {"buckets": self.buckets} if kind == "histogram" else {}
        self.prom = cls(name, doc, list(self.label_names), registry=REGISTRY, **extra)
        self._ray: Any = None
        self._children: dict[tuple[tuple[str, str], ...], _Child] = {}

    def _ray_metric(self) -> Any:
        if self._ray is None and _in_ray():
            from ray.util import metrics as ray_metrics

            if self.kind == "counter":
                self._ray = ray_metrics.Counter(self.name, self.doc, tag_keys=self.label_names)
            elif self.kind == "gauge":
                self._ray = ray_metrics.Gauge(self.name, self.doc, tag_keys=self.label_names)
            else:
                self._ray = ray_metrics.Histogram(self.name, self.doc, boundaries=list(self.buckets),
                                                  tag_keys=self.label_names)
        return self._ray

    def labels(self, **labels: str) -> _Child:
        """The child for these label values, made once: a request path records a dozen samples, and building the
        tags and looking up prometheus_client's child each time was most of a sample's cost (~3 of ~5 us)."""
        key = tuple((name, str(value)) for name, value in labels.items())   # 1, 1.0 and True are equal keys
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _Child(self, dict(key))
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def set(self, value: float) -> None:
        self.labels().set(value)


class _Child:
    def __init__(self, metric: Metric, labels: dict[str, str]) -> None:
        self.metric = metric
        self.tags = labels
        self.prom = metric.prom.labels(**labels) if labels else metric.prom   # made once: Metric.labels caches us

    def inc(self, amount: float = 1.0) -> None:
        self.prom.inc(amount)
        ray_metric = self.metric._ray_metric()
        if ray_metric is not None:
            ray_metric.inc(amount, tags=self.tags or None)

    def observe(self, value: float) -> None:
        self.prom.observe(value)
        ray_metric = self.metric._ray_metric()
        if ray_metric is not None:
            ray_metric.observe(value, tags=self.tags or None)

    def set(self, value: float) -> None:
        self.prom.set(value)
        ray_metric = self.metric._ray_metric()
        if ray_metric is not None:
            ray_metric.set(value, tags=self.tags or None)


def _full(name: str) -> str:
    return name if name.startswith(PREFIX) else PREFIX + name


def _get_or_create(kind: str, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float] = ()) -> Metric:
    full = _full(name)
    with _lock:
        metric = _metrics.get(full)
        if metric is None:
            metric = Metric(kind, full, doc, labels, buckets)
            _metrics[full] = metric
        elif metric.kind != kind:
            raise TypeError(f"metric {full} already registered as a {metric.kind}")
        return metric


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return _get_or_create("counter", name, doc, labels)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return _get_or_create("gauge", name, doc, labels)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS) -> Metric:
    return _get_or_create("histogram", name, doc, labels, buckets)


def exported_name(name: str) -> str:
    """The name Prometheus sees when the metric is scraped from Ray's metrics port."""
    return RAY_EXPORT_PREFIX + _full(name)


def exposition() -> tuple[bytes, str]:
    """The process-local registry in Prometheus text format, with its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Expose the process-local registry on ``http://addr:port/metrics`` from a background thread."""
    start_http_server(port, addr=addr, registry=REGISTRY)
