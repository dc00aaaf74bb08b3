"""Serving faults on the real app (router + model replicas over HTTP): a replica killed, MLflow stopped.

Nothing is mocked: the load comes from ``cluster.loadgen`` (a separate process for the
replica kill, its background thread during the rollout), the replica dies by SIGKILL of its
real worker process, and MLflow is the session's real server, stopped and started again.
Each test records what it measured through ``tests.faults.figures``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.loadgen import BackgroundLoad, LoadResult
from cluster.processes import session_members, terminate
from tests.faults.figures import record
from tests.faults.helpers import (
    MODEL_LATENCY_S,
    loadgen_result,
    slow_model,
    start_loadgen,
    wait_for_requests_in_flight,
)
from tests.serve.helpers import (
    TERMINAL,
    ServeApp,
    admin_ok,
    champion_version,
    instance,
    phase,
    register_test_model,
    register_version,
    running_app,
    spec,
    wait_for,
)

MODEL_DEPLOYMENT = "model-baseline"      # deployments.app names model deployments model-<variant>
# The kill: a slow model (helpers.slow_model, every forward pass MODEL_LATENCY_S) keeps requests in flight.
RATE_PER_S = 40
LOAD_S = 15
KILL_AFTER_S = 4                          # load settled on both replicas (the load generator starts in ~1 s)
MIN_IN_FLIGHT = 3                         # the victim holds at least this many admitted requests when killed
KILL_WAIT_S = 10
REPLACE_TIMEOUT_S = 90
# Each step's gate needs ~52 clean candidate requests (0 errors, 95 % bound under 5 %): at 25 req/s the
# three steps take ~15 s, at 10 req/s ~38 s. Still light for 2 cores (the replica-kill load, 40 req/s, is above).
ROLLOUT_RATE_PER_S = 25
PAUSED_HOLD_S = 3                         # MLflow stays down this long after the rollout paused


@pytest.fixture(scope="module")
def model(settings) -> str:
    """A registered model: v1 @champion, healthy v2 @challenger."""
    return register_test_model(settings)


# ---- a model replica killed with requests in flight ---------------------------------------------------------

@dataclass(frozen=True)
class Replica:
    actor_id: str
    name: str
    pid: int


def live_replicas(app_name: str, deployment: str) -> list[Replica]:
    """The deployment's ALIVE replica actors and their worker pids, from Ray's GCS actor table.

    ``ray.util.state.list_actors`` needs the dashboard, which the test Ray runs without.
    """
    from ray._private import state

    wanted = f"ServeReplica:{app_name}:{deployment}"
    return [Replica(a["ActorID"], a["Name"], a["Pid"]) for a in state.actors(actor_state_name="ALIVE").values()
            if a["ActorClassName"] == wanted]


def serving_replicas(app_name: str, deployment: str) -> tuple[str, int]:
    """Serve's own view of the deployment: (status, RUNNING replicas)."""
    from ray import serve

    overview = serve.status().applications[app_name].deployments[deployment]
    return str(overview.status), overview.replica_states.get("RUNNING", 0)


def replaced(app_name: str, victim: Replica, replicas: int) -> bool:
    """True once ``victim`` is gone and Serve runs ``replicas`` healthy replicas again."""
    alive = live_replicas(app_name, MODEL_DEPLOYMENT)
    status, running = serving_replicas(app_name, MODEL_DEPLOYMENT)
    return (victim.actor_id not in {r.actor_id for r in alive} and len(alive) == replicas
            and running == replicas and status.endswith("HEALTHY"))


def kill_with_requests_in_flight(victim: Replica, at_least: int) -> int:
    """SIGKILL ``victim`` once it holds ``at_least`` admitted requests; returns how many it held."""
    in_flight = wait_for_requests_in_flight(victim.name, at_least, timeout_s=KILL_WAIT_S)
    os.kill(victim.pid, signal.SIGKILL)
    return in_flight


@pytest.fixture(scope="module")
def slow_champion(settings) -> str:
    """A registered model (v1 @champion) whose every forward pass takes MODEL_LATENCY_S: a real model, slow."""
    from cluster.registry import Registry

    name = f"slow-{uuid.uuid4().hex[:6]}"
    version = register_version(settings, name, slow_model())
    Registry(settings).set_alias(name, "champion", version)
    return name


@pytest.fixture(scope="module")
def two_replica_app(serve_url: str, settings, slow_champion: str) -> Iterator[ServeApp]:
    """Router + the slow champion's model deployment with 2 replicas (static traffic, no candidate).

    ``replica_env={}``: user code on a thread of its own, so Serve's probes answer (helpers.slow_model says why).
    """
    with running_app(serve_url, settings, slow_champion, candidate=None, controller=False, replicas=2,
                     replica_env={}) as app:
        yield app


@pytest.mark.timeout(240)
def test_a_model_replica_killed_with_requests_in_flight_fails_none_of_them_and_is_replaced(
        two_replica_app: ServeApp, tmp_path: Path) -> None:
    """Steady load; one of the two model replicas is SIGKILLed while it holds admitted requests.

    Proves the router's replica-death retry: a request whose replica dies before answering is sent
    once more (Serve picks the live replica), so the kill costs callers nothing, and Serve replaces
    the replica. Without the retry each request in flight on the victim comes back 503 and the test
    fails on ``failed == 0`` (checked with REPLICA_DEATH_RETRIES = 0: 3 and 9 requests held at the
    kill, 3 and 9 answered 503; with the retry: 10 held, 0 failed). The kill waits until Serve
    counts requests on the victim; the model is real but slow (``FaultyModel`` with no failures and
    MODEL_LATENCY_S per forward pass), so they are still in flight when the signal lands. The load
    is well below what one replica serves and far from the router's 10 s deadline: a failure is the
    kill's. Nothing is mocked: real Serve over HTTP, the load generator in its own process, a real
    SIGKILL of the replica's worker process.
    """
    app = two_replica_app
    before = wait_for(lambda: len(live_replicas(app.name, MODEL_DEPLOYMENT)) == 2
                      and live_replicas(app.name, MODEL_DEPLOYMENT), timeout_s=60)
    victim = before[0]
    loadgen = start_loadgen(app.url, app.model, tmp_path, RATE_PER_S, LOAD_S)
    try:
        time.sleep(KILL_AFTER_S)
        in_flight = kill_with_requests_in_flight(victim, at_least=MIN_IN_FLIGHT)
        killed_at = time.monotonic()
        wait_for(lambda: replaced(app.name, victim, replicas=2), timeout_s=REPLACE_TIMEOUT_S, every_s=0.25)
        replaced_after_s = time.monotonic() - killed_at
        result = loadgen_result(loadgen, tmp_path, timeout_s=4 * LOAD_S)
    finally:
        terminate(session_members(loadgen.pid), grace_s=5)
    record("replica_killed_under_load", rate_per_s=RATE_PER_S, duration_s=LOAD_S, model_latency_s=MODEL_LATENCY_S,
           in_flight_at_kill=in_flight, sent=result["sent"], failed=result["failed"],
           status_counts=result["status_counts"], replica_replaced_s=round(replaced_after_s, 2))
    assert result["failed"] == 0, f"{in_flight} requests in flight at the kill: {result['status_counts']}"


# ---- MLflow stopped during a rollout ------------------------------------------------------------------------

def registry_alias(db: Path, model: str, alias: str) -> str | None:
    """The alias as MLflow's own SQLite store holds it (readable while the server is down)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                           (model, alias)).fetchone()
    return str(row[0]) if row else None


def paused_for_registry(app: ServeApp) -> dict[str, Any] | None:
    """The rollout when the controller paused it because the registry could not be reached."""
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    if rollout["phase"] == "paused" and rollout["paused_from"] == "promoting":
        return rollout
    return None


def served_between(result: LoadResult, start_s: float, end_s: float) -> list[int]:
    """HTTP statuses of the requests the load generator completed in [start_s, end_s] of its run."""
    return [status for at, _, status in result.timeline if start_s <= at <= end_s]


def promoted_at(app: ServeApp) -> float:
    """When the controller recorded the promotion (the ``succeeded`` event)."""
    events = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"]
    return next(e["at"] for e in events if e["to"] == "succeeded")


@pytest.fixture
def rollout_app(serve_url: str, settings, model: str) -> Iterator[ServeApp]:
    """The model's champion and challenger served with the rollout controller."""
    with running_app(serve_url, settings, model) as app:
        yield app


def test_mlflow_stopped_during_a_rollout_pauses_it_serving_continues_and_it_promotes_once_mlflow_is_back(
        rollout_app: ServeApp, mlflow_server) -> None:
    app = rollout_app
    db = mlflow_server.state_dir / "mlflow.db"
    load = BackgroundLoad(app.url, app.model, [instance(i) for i in range(100)], ROLLOUT_RATE_PER_S)
    load_t0 = time.perf_counter()
    load.start()
    try:
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci"})
        try:
            mlflow_server.stop()
            down_at = time.perf_counter()
            assert phase(app) in ("pending", "progressing"), "MLflow must go down before the promotion"
            paused = wait_for(lambda: paused_for_registry(app), timeout_s=90)
            time.sleep(PAUSED_HOLD_S)
            still = admin_ok(app, "GET", "/admin/rollout")["rollout"]
            alias_while_down = registry_alias(db, app.model, "champion")
        finally:
            mlflow_server.start()
        up_at, up_wall = time.perf_counter(), time.time()
        wait_for(lambda: phase(app) in TERMINAL, timeout_s=90)
    finally:
        result = load.stop()
    down = served_between(result, down_at - load_t0, up_at - load_t0)
    failed_down = sum(status != 200 for status in down)
    record("mlflow_stopped_during_rollout", mlflow_down_s=round(up_at - down_at, 2), served_while_down=len(down),
           failed_while_down=failed_down, failure_rate_while_down=round(failed_down / max(len(down), 1), 5),
           statuses_while_down=dict(Counter(down)), promoted_after_mlflow_back_s=round(promoted_at(app) - up_wall, 2))
    assert "registry unreachable" in paused["reason"]
    assert still["phase"] == "paused", "no promotion while MLflow is down"
    assert alias_while_down == app.versions["baseline"]
    assert down and failed_down == 0, "predictions keep answering 200 while MLflow is down"
    assert phase(app) == "succeeded"
    assert promoted_at(app) >= up_wall
    assert champion_version(app) == app.versions["candidate"]
