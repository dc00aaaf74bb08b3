"""Rollouts on a real local Serve app: router + two model versions + the rollout controller, over HTTP.

Load is real predict traffic from threads; the candidate that fails is a registered
``FaultyModel`` that raises in its replica. Admin calls go through the router's
authenticated admin API, as ``rayline canary`` does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from deployments.contracts import CANDIDATE, HEADER_VARIANT
from tests.serve.helpers import (
    TERMINAL,
    ServeApp,
    admin_ok,
    champion_version,
    deploy_app,
    instance,
    phase,
    register_test_model,
    running_app,
    spec,
    wait_for,
)


class Load:
    """Predict requests from a few threads; every response's send time and serving variant is kept."""

    def __init__(self, app: ServeApp, threads: int = 3) -> None:
        self.app = app
        self.served: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            sent = time.time()
            try:
                r = self.app.predict([instance(i)])
                self.served.append((sent, r.headers.get(HEADER_VARIANT, ""), r.status_code))
            except Exception:
                continue
            i += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@pytest.fixture(scope="module", params=["separate", "colocated"])
def faulty_app(request, serve_url, settings):
    """v1 healthy @champion, v2 @challenger that raises on 20% of calls; each version its own replica set,
    or both loaded inside the router's replicas (``colocate: true``)."""
    with running_app(serve_url, settings, register_test_model(settings, candidate_failure_rate=0.2),
                     colocate=request.param == "colocated") as app:
        yield app


def test_a_candidate_failing_20_percent_is_rolled_back_and_gets_no_request_after_the_router_takes_the_decision(
        faulty_app):
    app = faulty_app
    with Load(app) as load:
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci", "reason": "test"})
        wait_for(lambda: phase(app) in TERMINAL)
        rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
        decision_epoch = rollout["decision"]["epoch"]
        adopted_at = wait_for(lambda: admin_ok(app, "GET", "/admin/traffic")["epoch"] >= decision_epoch and time.time())
        time.sleep(1.0)
    assert rollout["phase"] == "rolled_back"
    assert "error rate" in rollout["decision"]["reason"] and rollout["decision"]["actor"] == "controller"
    assert any(v == CANDIDATE and code == 500 for _, v, code in load.served), "the candidate really failed"
    after = [v for sent, v, _ in load.served if sent > adopted_at]
    assert after and CANDIDATE not in after
    history = admin_ok(app, "GET", "/admin/rollout/history")
    events = history["rollouts"][-1]["events"]
    assert [e["to"] for e in events][-2:] == ["rolling_back", "rolled_back"]
    assert champion_version(app) == app.versions["baseline"]


def test_a_healthy_candidate_is_promoted_step_by_step_and_the_champion_alias_moves(serve_app):
    app = serve_app
    with Load(app):
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci"})
        wait_for(lambda: phase(app) in TERMINAL)
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "succeeded", rollout["reason"]
    events = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"]
    shares = [e["weights"].get(CANDIDATE, 0.0) for e in events if e["to"] == "progressing"]
    assert shares == [0.25, 0.5, 1.0]
    assert champion_version(app) == app.versions["candidate"]


def test_admin_commands_need_the_bearer_token(serve_app):
    assert serve_app.admin("POST", "/admin/rollout/pause", json={}, token=None).status_code == 401
    assert serve_app.admin("POST", "/admin/rollout/pause", json={}, token="wrong").status_code == 401


def test_a_command_that_does_not_fit_the_state_is_a_conflict(serve_app):
    wait_for(lambda: phase(serve_app) in TERMINAL or phase(serve_app) is None)
    r = serve_app.admin("POST", "/admin/rollout/resume", json={"actor": "ci"})
    assert r.status_code in (404, 409), r.text


def test_a_controller_killed_mid_rollout_resumes_from_its_persisted_step(serve_url, settings):
    import ray
    from ray import serve

    app = deploy_app(serve_url, settings, register_test_model(settings))
    try:
        with Load(app):
            admin_ok(app, "POST", "/admin/rollout/start",
                     {"spec": spec(app, min_requests=100_000), "actor": "ci"})   # stays on step 1 until promoted
            wait_for(lambda: phase(app) == "progressing")
            before = admin_ok(app, "GET", "/admin/rollout")
            replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                        if app.name in a["name"] and "RolloutController" in a["name"]]
            assert len(replicas) == 1
            ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
            resumed = wait_for(lambda: _restarted(app), timeout_s=120, every_s=0.5)
            assert resumed["rollout"]["phase"] == "progressing"
            assert resumed["traffic"]["weights"] == before["traffic"]["weights"]
            assert resumed["traffic"]["epoch"] > before["traffic"]["epoch"]
            admin_ok(app, "POST", "/admin/rollout/promote", {"actor": "ci", "full": True})
            wait_for(lambda: phase(app) in TERMINAL)
        assert phase(app) == "succeeded"
    finally:
        app.client.close()
        serve.delete(app.name)


def _restarted(app: ServeApp) -> dict[str, Any] | None:
    r = app.admin("GET", "/admin/rollout/history")
    if r.status_code != 200:
        return None
    events = r.json()["rollouts"][-1]["events"]
    if not any(e["command"] == "restart" for e in events):
        return None
    return admin_ok(app, "GET", "/admin/rollout")
