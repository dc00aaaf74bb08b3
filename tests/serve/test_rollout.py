"""Rollouts on a real local Serve app: router + two model versions + the rollout controller, over HTTP.

Load is real predict traffic from threads; the candidate that fails is a registered
``FaultyModel`` that raises in its replica. Admin calls go through the router's
authenticated admin API, as ``rayline canary`` does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
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
                r = self.send(i)
                self.served.append((sent, r.headers.get(HEADER_VARIANT, ""), r.status_code))
            except Exception:
                continue
            i += 1

    def send(self, i: int) -> httpx.Response:
        """One request of the load (the i-th of its thread); subclasses send other kinds."""
        return self.app.predict([instance(i)])

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


# ---- parts that fail: two controllers, a cut-off router, promotion interrupted, mismatched versions ------------
# One app (its own registered model, so champion moves here touch no other suite) serves every test below that
# can share it; each leaves it with no rollout running and champion on v1.

SAFE_SPEC = {"interval_s": 1, "min_requests": 100_000}   # holds at 25 % until told; router lease 3 intervals


@pytest.fixture(scope="module")
def safety_app(serve_url, settings):
    with running_app(serve_url, settings, register_test_model(settings)) as app:
        yield app


@pytest.fixture
def safe_app(safety_app):
    """The shared app for one test; a rollout the test left running is aborted after it (a failure stays one)."""
    yield safety_app
    if phase(safety_app) not in TERMINAL | {None}:
        safety_app.admin("POST", "/admin/rollout/abort", json={"actor": "ci", "reason": "test cleanup"})
        wait_for(lambda: phase(safety_app) in TERMINAL, timeout_s=60)


def _settle(app: ServeApp) -> dict[str, Any]:
    """Wait for the rollout to end; its final status."""
    wait_for(lambda: phase(app) in TERMINAL, timeout_s=60)
    return admin_ok(app, "GET", "/admin/rollout")


def _progressing(app: ServeApp, **spec_overrides: Any) -> dict[str, Any]:
    admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app, **{**SAFE_SPEC, **spec_overrides}),
                                                    "actor": "ci"})
    wait_for(lambda: phase(app) == "progressing")
    status = admin_ok(app, "GET", "/admin/rollout")
    epoch = status["traffic"]["epoch"]
    wait_for(lambda: admin_ok(app, "GET", "/admin/traffic")["epoch"] >= epoch)
    return status


def _controller_actor(app: ServeApp):
    import ray

    (found,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if app.name in a["name"] and "RolloutController" in a["name"]]
    return ray.get_actor(found["name"], namespace=found["namespace"])


@pytest.mark.timeout(180)
def test_start_is_a_conflict_naming_both_version_pairs_when_the_spec_resolves_to_other_versions(safe_app, settings):
    from tests.serve.helpers import register_version, tiny_model

    v3 = register_version(settings, safe_app.model, tiny_model(3))
    r = safe_app.admin("POST", "/admin/rollout/start", json={"spec": spec(safe_app, candidate=v3), "actor": "ci"})
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert f"candidate v{v3}" in message and f"candidate v{safe_app.versions['candidate']}" in message
    assert phase(safe_app) is None   # nothing started, no traffic moved


@pytest.mark.timeout(180)
def test_a_router_cut_off_from_its_controller_sends_everything_to_the_baseline_and_says_so(safe_app):
    import os
    import signal

    import ray

    app = safe_app
    _progressing(app)
    pid = ray.get(_controller_actor(app).__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGSTOP)   # the controller is alive but answers nothing: a partition, as routers see it
    try:
        time.sleep(3.5)            # the lease (3 analysis intervals: 3 s) runs out
        served = [app.predict([instance(i)]) for i in range(40)]
        ready = app.client.get(f"{app.url}/readyz").json()
        exported = app.client.get(f"{app.url}/metrics").text
    finally:
        os.kill(pid, signal.SIGCONT)
    assert all(r.status_code == 200 for r in served)
    assert {r.headers[HEADER_VARIANT] for r in served} == {"baseline"}
    assert ready["controller"]["fail_closed"] and ready["controller"]["serving"] == {"baseline": 1.0}
    assert any("serve_router_fail_closed{" in line and line.endswith(" 1.0") for line in exported.splitlines())
    admin_ok(app, "POST", "/admin/rollout/abort", {"actor": "ci"})
    assert _settle(app)["rollout"]["phase"] == "rolled_back"


@pytest.mark.timeout(180)
def test_a_pause_during_promotion_stays_paused_and_an_abort_then_leaves_champion_where_it_was(safe_app):
    app = safe_app
    _progressing(app)
    admin_ok(app, "POST", "/admin/rollout/promote", {"actor": "ci", "full": True})
    admin_ok(app, "POST", "/admin/rollout/pause", {"actor": "ci", "reason": "look first"})
    time.sleep(3.0)   # the registry is healthy all along: nothing may promote on its own
    status = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert status["phase"] == "paused" and status["paused_by"] == "ci", status["reason"]
    admin_ok(app, "POST", "/admin/rollout/abort", {"actor": "ci"})
    assert _settle(app)["rollout"]["phase"] == "rolled_back"
    assert champion_version(app) == app.versions["baseline"]


@pytest.mark.timeout(180)
def test_an_alias_move_queued_before_an_abort_never_leaves_champion_on_the_candidate(safe_app):
    app = safe_app
    _progressing(app)
    promote = app.admin("POST", "/admin/rollout/promote", json={"actor": "ci", "full": True})
    abort = app.admin("POST", "/admin/rollout/abort", json={"actor": "ci", "reason": "changed my mind"})
    assert promote.status_code == 200 and abort.status_code == 200, (promote.text, abort.text)
    final = _settle(app)["rollout"]
    time.sleep(2.0)   # a late move would land about now
    assert final["phase"] == "rolled_back"
    assert champion_version(app) == app.versions["baseline"]


@pytest.mark.timeout(240)
def test_two_controllers_of_one_model_never_both_act(safe_app, serve_url, settings):
    """A second app's controller on the same state (a redeploy beside the old one): one writer at a time."""
    from deployments.rollout.store import RolloutStore

    first = safe_app
    state_dir = str(settings.state_dir / first.name)
    status = _progressing(first)
    rid = status["rollout"]["rollout_id"]
    with running_app(serve_url, settings, first.model, state_dir=state_dir) as second:
        wait_for(lambda: (admin_ok(second, "GET", "/admin/rollout")["rollout"] or {}).get("rollout_id") == rid)
        admin_ok(first, "POST", "/admin/rollout/abort", {"actor": "ci", "reason": "from the first app"})
        wait_for(lambda: phase(second) in ("rolling_back", "rolled_back"), timeout_s=30)
        stored = []
        for _ in range(30):   # 3 s: every interval the old code's second controller saved its own state back
            stored.append(RolloutStore(f"{state_dir}/rollouts", first.model).load().phase.value)
            time.sleep(0.1)
        wait_for(lambda: phase(second) == "rolled_back" and phase(first) == "rolled_back", timeout_s=60)
        served = {second.predict([instance(i)]).headers[HEADER_VARIANT] for i in range(20)}
    assert set(stored) <= {"rolling_back", "rolled_back"}, stored
    assert served == {"baseline"}
    assert champion_version(first) == first.versions["baseline"]


@pytest.mark.timeout(240)
def test_a_candidate_needing_a_field_callers_do_not_send_is_refused_and_forced_through_is_rolled_back(
        serve_url, settings):
    from tests.serve.helpers import PREPROCESSING_WITH_X4, register_version, tiny_model

    model = f"serve-x4-{time.time_ns() % 10**6}"
    v1 = register_version(settings, model, tiny_model(0))
    v2 = register_version(settings, model, tiny_model(1, preprocessing=PREPROCESSING_WITH_X4), PREPROCESSING_WITH_X4)
    from cluster.registry import Registry

    Registry(settings).set_alias(model, "champion", v1)
    Registry(settings).set_alias(model, "challenger", v2)
    with running_app(serve_url, settings, model) as app:
        refused = app.admin("POST", "/admin/rollout/start", json={"spec": spec(app), "actor": "ci"})
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]["message"]
        assert "x4" in message and "Baseline schema" in message and "candidate schema" in message
        assert phase(app) is None
        with Load(app) as load:
            admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app, allow_new_required_fields=True),
                                                            "actor": "ci", "reason": "x4 is coming"})
            final = _settle(app)["rollout"]
        assert final["phase"] == "rolled_back" and "4xx" in final["decision"]["reason"], final["reason"]
        assert any(v == CANDIDATE and code == 422 for _, v, code in load.served)
        assert champion_version(app) == v1
        events = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"]
        assert events[0]["forced_new_required_fields"] == ["x4"] and events[0]["actor"] == "ci"
