"""A real Prometheus server (Debian package) for tests: own config, own port, own data dir."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from cluster.processes import free_port, session_members, start_detached, terminate, wait_until


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, list[str]], scrape_interval_s: float = 2.0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.scrape_interval_s = scrape_interval_s
        self.pid: int | None = None

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not installed: run `make tools` (tools/install-prometheus.sh)")
        config = {
            # The timeout is the whole interval: Ray's endpoint grows with every deployment a session made and
            # can take over a second on 2 busy cores (a timed-out scrape reads as the target being down).
            "global": {"scrape_interval": f"{int(self.scrape_interval_s * 1000)}ms",
                       "scrape_timeout": f"{int(self.scrape_interval_s * 1000)}ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]} for job, addrs in self.targets.items()
            ],
        }
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        proc = start_detached(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            self.workdir / "prometheus.log",
        )
        self.pid = proc.pid
        if not wait_until(self._ready, timeout_s=60):
            raise RuntimeError(f"prometheus did not start: see {self.workdir / 'prometheus.log'}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.pid is not None:
            terminate(session_members(self.pid), grace_s=5)
            self.pid = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        resp.raise_for_status()
        return resp.json()["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step_s: float = 1.0) -> list[dict[str, Any]]:
        """Each series' ``[(unix time, value), ...]`` between ``start`` and ``end`` (what a Grafana panel plots)."""
        resp = httpx.get(f"{self.url}/api/v1/query_range",
                         params={"query": promql, "start": start, "end": end, "step": step_s}, timeout=10)
        resp.raise_for_status()
        return [{"metric": s["metric"], "values": [(float(t), float(v)) for t, v in s["values"]]}
                for s in resp.json()["data"]["result"]]

    def metric_names(self) -> set[str]:
        resp = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=10)
        resp.raise_for_status()
        return set(resp.json()["data"])

    def wait_for(self, promql: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns a non-empty result (target discovery takes ~5 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(1.0)
        raise AssertionError(f"no samples for {promql!r} within {timeout_s} s")

    def targets_health(self) -> dict[str, str]:
        resp = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        resp.raise_for_status()
        return {t["scrapeUrl"]: t["health"] for t in resp.json()["data"]["activeTargets"]}


@contextmanager
def scraping(workdir: Path, targets: dict[str, list[str]],
             scrape_interval_s: float = 2.0) -> Iterator[PrometheusServer]:
    """A started server for the ``with`` block, stopped (with its whole process session) after it."""
    server = PrometheusServer(workdir, targets, scrape_interval_s)
    server.start()
    try:
        yield server
    finally:
        server.stop()
