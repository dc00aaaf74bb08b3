"""Node loss on a real multi-node local cluster: a worker node killed under training, serving and a rollout.

The cluster is ``rayline up --nodes 3`` (a head with 2 CPUs plus two worker nodes with 1 CPU
each, every node its own raylet, object store, agents and worker processes on this machine, as
Ray's own tests run them), brought up once for the module. A node is lost the way a machine
is: every process of its session (raylet, agents, ``ray start``, the Ray workers it spawned)
is SIGKILLed at once. Nothing is mocked.

Why not the session's ``ray_cluster`` fixture: it is one node started with
``ray.init(address="local")`` in the pytest process, and a process holds one Ray connection,
so the pytest process cannot also be a driver of this cluster, whichever runs first. This
module therefore never calls ``ray.init``: it reaches the cluster as users do, through the
Jobs API (training runs as a job whose driver sits on the head), a child process that deploys
the Serve app with ``cluster.serving`` (what ``rayline serve deploy`` runs), HTTP (predictions,
the admin API, the dashboard's Serve REST API for where replicas run) and signals. It runs the
same alone or anywhere in one ``pytest`` invocation with the rest of the suite.

Each test records what it measured through ``tests.faults.figures`` and starts by bringing
back any node an earlier test lost (``rayline up`` restarts lost worker nodes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import yaml

from cluster.jobs_client import JobsClient, parse_result
from cluster.loadgen import BackgroundLoad
from cluster.processes import free_port
from cluster.stack import RAY_HEAD, WORKER_RESOURCE, ray_env
from tests.cluster.helpers import LocalCluster, local_cluster
from tests.faults.figures import record
from tests.faults.helpers import (
    HOLD_AT,
    MODEL_LATENCY_S,
    ROOT,
    WAIT_S,
    WORLD,
    loadgen_result,
    resumed_attempt,
    start_loadgen,
    steps_lost,
    wait_until_held,
)
from tests.serve.helpers import ADMIN_TOKEN, TERMINAL, ServeApp, admin_ok, instance, spec, wait_for
from tests.train.helpers import TOTAL_STEPS, tiny_gpt_config
from train.faults import HOLD_AT_STEP_ENV

pytestmark = pytest.mark.slow

APP = "rayline"                      # cluster.serving's app name
BASELINE_MODEL = "model-baseline"    # deployments.app names model deployments model-<variant>
CONTROLLER = "RolloutController"
ROUTER = "router"
# The node loss: the champion is helpers.slow_model (every forward pass MODEL_LATENCY_S), so at 40 req/s each
# model replica holds requests in flight; the node goes once Serve counts MIN_IN_FLIGHT on its replica.
RATE_PER_S = 40
LOAD_S = 15
MIN_IN_FLIGHT = 3
KILL_WAIT_S = 12                     # for the victim replica to hold MIN_IN_FLIGHT (the watcher connects first)
REPLACE_TIMEOUT_S = 120
ROLLOUT_RATE_PER_S = 25  # each step's gate needs ~52 clean candidate requests: ~15 s for 3 steps (~38 s at 10)
SERVE_OPTIONS = {
    # 2 replicas of each model version and of the router, never two of one deployment on a node: a lost
    # node costs each deployment one replica. The controller stays off the head, so its node can be lost.
    "replicas": 2, "router_replicas": 2, "max_replicas_per_node": 1, "num_cpus": 0.1, "router_num_cpus": 0.1,
    "controller_resources": {WORKER_RESOURCE: 0.01},
    "replica_env": {},   # user code on a thread of its own: Serve's probes answer while the slow model computes
}


# The GCS declares a node dead after this many failed health checks, one a second: ~10 s instead of Ray's
# default ~15-30 s (3 s × 5, plus time-outs), to keep the module's CI time down. Not lower: on 2 loaded
# cores a busy raylet must not be taken for a dead one.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "10"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("nodes"), nodes=3, head_cpus=2, worker_cpus=1,
                       extra_env=FAST_NODE_DEATH, serve_http_port=str(free_port()),
                       admin_token=ADMIN_TOKEN) as running:
        yield running


def all_nodes_up(cluster: LocalCluster) -> None:
    """Bring back any node an earlier test lost, so each test starts on three nodes."""
    out = cluster.restart_lost_nodes()
    assert "already up" in out, out


# ---- a worker node lost during a training job ---------------------------------------------------------------

@pytest.mark.timeout(400)
def test_a_worker_node_lost_during_training_the_job_finishes_from_its_last_checkpoint(
        cluster: LocalCluster, tmp_path: Path) -> None:
    all_nodes_up(cluster)
    run_name = "node-loss-train"
    config = tiny_gpt_config(run_name, max_failures=1)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    client = JobsClient(cluster.settings)
    directory = Path(str(cluster.settings.checkpoints_root)) / run_name

    job = client.submit(f"python -m jobs.train --config {config_file}", working_dir=ROOT,
                        env={HOLD_AT_STEP_ENV: str(HOLD_AT)})
    checkpoint_step, first = wait_until_held(directory)
    workers = {p.rank: p.pid for p in first if p.step == HOLD_AT}
    placed = {rank: cluster.node_of(pid) for rank, pid in workers.items()}
    assert len(set(placed.values())) == WORLD, f"the workers were not spread over nodes: {placed}"
    victim = next(node for node in placed.values() if node != RAY_HEAD)
    killed_at = time.time()
    killed = cluster.kill_node(victim)
    final = client.wait(job, timeout_s=WAIT_S)
    ended_at = time.time()

    logs = client.logs(job)
    assert final == "SUCCEEDED", logs[-3000:]
    result = parse_result(logs)
    resumed = resumed_attempt(directory, first)
    assert set(workers.values()) & set(killed), "the lost node held a training worker"
    assert result["metrics"]["step"] == TOTAL_STEPS
    assert result["metrics"]["resumed_from_step"] == checkpoint_step  # the last checkpoint before the loss
    assert resumed and min(p.step for p in resumed) == checkpoint_step + 1
    record("worker node lost during training", placed=placed, lost_node=victim, processes_killed=len(killed),
           resumed_from_step=checkpoint_step, steps_lost=steps_lost(first, checkpoint_step),
           seconds_loss_to_resumed_step=round(min(p.time for p in resumed) - killed_at, 2),
           seconds_loss_to_job_end=round(ended_at - killed_at, 2))


# ---- the node of a model replica lost under steady load -----------------------------------------------------

DEPLOY = """
import json, sys
from cluster.serving import app_config, deploy_ready
from cluster.settings import load_settings
from tests.faults.helpers import slow_model
from tests.serve.helpers import register_test_model

settings = load_settings()
model = register_test_model(settings, champion=slow_model())
cfg = app_config(settings, model, candidate=f"models:/{model}@challenger", **json.loads(sys.argv[1]))
url = deploy_ready(settings, cfg)
print("DEPLOYED " + json.dumps({"model": model, "url": url}))
"""


@pytest.fixture(scope="module")
def served(cluster: LocalCluster) -> Iterator[ServeApp]:
    """v1 @champion (helpers.slow_model) and v2 @challenger behind the router with the rollout controller,
    deployed from a child process."""
    # Ray's token settings go in before the child imports anything (Ray reads them on import).
    env = {**cluster.env, **ray_env(cluster.settings), "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": str(cluster.settings.mlflow_tracking_uri)}
    proc = subprocess.run([sys.executable, "-c", DEPLOY, json.dumps(SERVE_OPTIONS)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("DEPLOYED ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    deployed = json.loads(line.removeprefix("DEPLOYED "))
    with httpx.Client(timeout=30) as client:
        versions = client.get(f"{deployed['url']}/v1/models/{deployed['model']}").json()["versions"]
        yield ServeApp(name=APP, model=deployed["model"], url=deployed["url"], versions=versions, client=client)


def replaced(cluster: LocalCluster, deployment: str, killed: set[int], replicas: int) -> bool:
    """True once Serve runs ``replicas`` RUNNING replicas of ``deployment`` again, none of them a killed process."""
    running = cluster.running_replicas(APP, deployment)
    return len(running) == replicas and not {r["pid"] for r in running} & killed


# A Ray driver of the cluster in a child process (this process never joins it): READY once connected, then
# HELD <n> once the replica ACTOR_NAME holds AT_LEAST admitted requests.
WATCH = """
import sys
from cluster.serving import connect
from cluster.settings import load_settings
from tests.faults.helpers import wait_for_requests_in_flight

connect(load_settings())
print("READY", flush=True)
print("HELD", wait_for_requests_in_flight(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])), flush=True)
"""


def watch_requests_in_flight(cluster: LocalCluster, actor_name: str, log: Path) -> subprocess.Popen:
    """Start the WATCH child for ``actor_name`` (its stderr to ``log``); :func:`watcher_says` reads its lines."""
    env = {**cluster.env, **ray_env(cluster.settings), "PYTHONPATH": str(ROOT)}
    with log.open("w") as stderr:
        return subprocess.Popen([sys.executable, "-c", WATCH, actor_name, str(MIN_IN_FLIGHT), str(KILL_WAIT_S)],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)


def watcher_says(watcher: subprocess.Popen, word: str, log: Path) -> str:
    """Block until the watcher prints a line starting with ``word``; the rest of it (AssertionError if it exits)."""
    assert watcher.stdout is not None
    for line in watcher.stdout:
        if line.startswith(word):
            return line.removeprefix(word).strip()
    watcher.wait(timeout=10)
    raise AssertionError(f"the watcher exited before {word}: {log.read_text()[-3000:]}")


@pytest.mark.timeout(600)
def test_the_node_of_a_model_replica_lost_with_requests_in_flight_fails_none_of_them_and_the_replica_is_replaced(
        cluster: LocalCluster, served: ServeApp, tmp_path: Path) -> None:
    """Steady load on a slow champion; the worker node of one of its two replicas is lost while it holds requests.

    Proves the router's replica-death retry across a node loss: a model call whose replica died with
    its node is sent once more (Serve picks the live replica), so the loss costs callers nothing, and
    Serve places a new replica on a live node. Without the retry the requests in flight on the lost
    replica come back 503 and the test fails on ``failed == 0``. The node is lost once Serve counts
    MIN_IN_FLIGHT requests on the victim replica (a loss between two requests would prove nothing:
    with a fast model this test passed with the retry off, 0 of 1500 failed); the champion is real but
    slow (helpers.slow_model), so they are still in flight when the node goes.
    """
    all_nodes_up(cluster)
    before = wait_for(lambda: len(r := cluster.running_replicas(APP, BASELINE_MODEL)) == 2 and r, timeout_s=120)
    nodes = {cluster.node_of(r["pid"]) for r in before}
    replica = next(r for r in sorted(before, key=lambda r: str(cluster.node_of(r["pid"])))
                   if cluster.node_of(r["pid"]) != RAY_HEAD)
    victim = cluster.node_of(replica["pid"])
    routers_on = sorted(str(cluster.node_of(r["pid"])) for r in cluster.running_replicas(APP, ROUTER))
    log = tmp_path / "watcher.log"
    watcher = watch_requests_in_flight(cluster, replica["actor_name"], log)
    loadgen: subprocess.Popen | None = None
    try:
        watcher_says(watcher, "READY", log)   # connected (seconds on a busy machine) before the load starts
        loadgen = start_loadgen(served.url, served.model, tmp_path, RATE_PER_S, LOAD_S)
        in_flight = int(watcher_says(watcher, "HELD", log))
        killed_at = time.monotonic()
        killed = set(cluster.kill_node(victim))
        wait_for(lambda: replaced(cluster, BASELINE_MODEL, killed, replicas=2), timeout_s=REPLACE_TIMEOUT_S,
                 every_s=0.5)
        replaced_after_s = time.monotonic() - killed_at
        result = loadgen_result(loadgen, tmp_path, timeout_s=4 * LOAD_S)
    finally:
        if loadgen is not None:
            loadgen.kill()
        watcher.kill()
        watcher.wait(timeout=10)
    after = {cluster.node_of(r["pid"]) for r in cluster.running_replicas(APP, BASELINE_MODEL)}
    record("node of a model replica lost under load", rate_per_s=RATE_PER_S, duration_s=LOAD_S, lost_node=victim,
           model_latency_s=MODEL_LATENCY_S, in_flight_at_loss=in_flight, replicas_on=sorted(map(str, nodes)),
           routers_on=routers_on,
           replicas_after_on=sorted(map(str, after)), sent=result["sent"], failed=result["failed"],
           status_counts=result["status_counts"], replica_replaced_s=round(replaced_after_s, 2))
    assert len(nodes) == 2, "the two replicas ran on two nodes"
    assert victim not in after
    assert result["failed"] == 0, f"{in_flight} requests in flight at the loss: {result['status_counts']}"


# ---- the node of the rollout controller lost mid-rollout ----------------------------------------------------

def rollout(app: ServeApp) -> dict[str, Any]:
    return admin_ok(app, "GET", "/admin/rollout")["rollout"]


def champion(cluster: LocalCluster, model: str) -> str:
    uri = str(cluster.settings.mlflow_tracking_uri)   # both: an earlier test may have set a global registry URI
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return str(client.get_model_version_by_alias(model, "champion").version)


@pytest.mark.timeout(400)
def test_the_node_of_the_rollout_controller_lost_mid_rollout_the_rollout_resumes_or_holds_at_baseline(
        cluster: LocalCluster, served: ServeApp) -> None:
    all_nodes_up(cluster)
    app = served
    controller = wait_for(lambda: (r := cluster.running_replicas(APP, CONTROLLER)) and r[0], timeout_s=120)
    victim = cluster.node_of(controller["pid"])
    assert victim not in (None, RAY_HEAD), f"the controller was placed on {victim}, not on a worker node"
    load = BackgroundLoad(app.url, app.model, [instance(i) for i in range(100)], ROLLOUT_RATE_PER_S)
    load.start()
    try:
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci"})
        at_loss = wait_for(lambda: (r := rollout(app))["phase"] == "progressing" and r["step_index"] >= 0 and r,
                           timeout_s=60)
        killed_at = time.monotonic()
        killed = set(cluster.kill_node(victim))
        new = wait_for(lambda: (r := cluster.running_replicas(APP, CONTROLLER)) and r[0]["pid"] not in killed
                       and r[0], timeout_s=REPLACE_TIMEOUT_S, every_s=0.5)
        replaced_after_s = time.monotonic() - killed_at
        ended = wait_for(lambda: (r := rollout(app))["phase"] in TERMINAL | {"held"} and r, timeout_s=180, every_s=0.5)
    finally:
        result = load.stop()
    traffic = admin_ok(app, "GET", "/admin/traffic")
    events = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"]
    restart = next((e for e in events if e["command"] == "restart"), None)
    record("node of the rollout controller lost mid-rollout", lost_node=victim,
           new_controller_on=cluster.node_of(new["pid"]), phase_at_loss=at_loss["phase"],
           step_at_loss=at_loss["step_index"], ended=ended["phase"], restart_event=restart,
           controller_replaced_s=round(replaced_after_s, 2), requests=result.sent, failed=result.failed)
    assert cluster.node_of(new["pid"]) != victim
    assert restart is not None, f"the new controller did not resume the persisted rollout: {events}"
    if ended["phase"] == "held":
        assert traffic["weights"].get("candidate", 0.0) == 0.0, traffic
        assert champion(cluster, app.model) == app.versions["baseline"]
    else:
        assert ended["phase"] == "succeeded", ended
        assert champion(cluster, app.model) == app.versions["candidate"]
