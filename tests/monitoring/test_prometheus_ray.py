"""A real Prometheus server scrapes the session's Ray metrics endpoint and answers queries on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring.prometheus import PrometheusServer


@pytest.fixture(scope="module")
def prometheus(ray_metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(Path(tmp_path_factory.mktemp("prom")), {"ray": [f"127.0.0.1:{ray_metrics_port}"]})
    server.start()
    yield server
    server.stop()


def test_prometheus_scrapes_ray_metrics(prometheus: PrometheusServer) -> None:
    import ray

    @ray.remote(num_cpus=0.1)
    def work(x: int) -> int:
        return x + 1

    assert ray.get([work.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    up = prometheus.wait_for('up{job="ray"} == 1')
    assert up, prometheus.targets_health()
    names = prometheus.metric_names()
    ray_names = {n for n in names if n.startswith("ray_")}
    assert len(ray_names) > 20, sorted(names)
    tasks = prometheus.wait_for("sum(ray_tasks)")
    assert float(tasks[0]["value"][1]) >= 0


def test_rayline_metrics_recorded_inside_ray_reach_prometheus_through_rays_exporter(
    prometheus: PrometheusServer,
) -> None:
    """What the Helm chart's PodMonitors rely on: our metrics on Ray's port, summed over processes."""
    import ray

    from cluster import metrics

    @ray.remote(num_cpus=0.1)
    class Recorder:
        def record(self, n: int) -> None:
            c = metrics.counter("test_mirror_requests_total", "test", ["variant"])
            for _ in range(n):
                c.labels(variant="candidate").inc()

    recorders = [Recorder.remote() for _ in range(2)]
    ray.get([r.record.remote(3) for r in recorders])
    name = metrics.exported_name("test_mirror_requests_total")
    assert name == "ray_rayline_test_mirror_requests_total"
    result = prometheus.wait_for(f'sum({name}{{variant="candidate"}}) >= 6', timeout_s=90)
    assert float(result[0]["value"][1]) == 6.0
