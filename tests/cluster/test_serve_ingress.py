"""Which Serve ingress a stack's Ray processes start with (``cluster.serve_ingress``), and on which side ports."""

from __future__ import annotations

import pytest

from cluster.serve_ingress import HAPROXY_FLAG, RETRY_ON, Ingress, ingress_env
from cluster.settings import load_settings
from cluster.stack import ray_env


def test_a_stack_runs_serves_proxy_by_default_and_haproxy_on_its_own_side_ports_when_asked(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HAPROXY_FLAG, raising=False)
    assert ray_env(load_settings(state_dir=tmp_path))[HAPROXY_FLAG] == "0"
    env = ray_env(load_settings(state_dir=tmp_path, serve_ingress="haproxy", serve_haproxy_stats_port=18404,
                                serve_haproxy_metrics_port=19101))
    assert env[HAPROXY_FLAG] == "1"
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("18404", "19101")
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"   # not Ray's 30 s on every replica stop
    assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == RETRY_ON == "conn-failure empty-response"


def test_an_operators_own_ray_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HAPROXY_FLAG, "0")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "28404")
    assert ingress_env(Ingress.HAPROXY, 1, 2) == {HAPROXY_FLAG: "0"}
    monkeypatch.setenv(HAPROXY_FLAG, "1")
    env = ingress_env(Ingress.PROXY, 1, 2)
    assert env[HAPROXY_FLAG] == "1" and env["RAY_SERVE_HAPROXY_STATS_PORT"] == "28404"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "2"
