"""The local stack for real: `rayline up → status → job submit → down` with real Ray and MLflow processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from cluster.processes import free_port, session_members, wait_until
from cluster.provenance import STAMP_FILE, from_git
from cluster.settings import load_settings
from cluster.stack import load_state
from tests.cluster.helpers import ROOT, rayline, stack_down, stack_settings
from tests.cluster.helpers import stack_env as make_stack_env
from tests.prometheus_text import sample_sum


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private local stack on free ports with two Ray nodes (head + one worker), up once for this module; Serve's
    ingress HAProxy (``--serve-ingress haproxy``; every other suite's Serve runs behind Serve's own proxy)."""
    env = make_stack_env(tmp_path_factory.mktemp("stack"), ray_num_cpus="2", serve_ingress="haproxy")
    proc = rayline(env, "up", "--nodes", "2", "--worker-cpus", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield env
    stack_down(env)
    (ROOT / STAMP_FILE).unlink(missing_ok=True)   # the source stamp submissions write: leave the checkout as it was


def test_up_records_pids_ports_and_urls(stack_env: dict[str, str]) -> None:
    state = json.loads((Path(stack_env["RAYLINE_STATE_DIR"]) / "stack.json").read_text())
    assert set(state["components"]) == {"ray", "mlflow", "ray-worker-1"}
    assert state["components"]["mlflow"]["ports"]["http"] == int(stack_env["RAYLINE_MLFLOW_PORT"])
    assert state["components"]["ray"]["urls"]["dashboard"].endswith(stack_env["RAYLINE_RAY_DASHBOARD_PORT"])
    token_file = Path(stack_env["RAYLINE_STATE_DIR"]) / "ray_auth_token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


def test_status_reports_every_component_healthy(stack_env: dict[str, str]) -> None:
    proc = rayline(stack_env, "status")
    assert proc.returncode == 0, proc.stdout
    for check in ("ray-gcs", "ray-job-api", "ray-job-agent", "ray-node", "mlflow-health"):
        assert check in proc.stdout
    assert "ray-worker-1" in proc.stdout
    assert "DOWN" not in proc.stdout


def test_up_when_already_up_says_so(stack_env: dict[str, str]) -> None:
    proc = rayline(stack_env, "up")
    assert proc.returncode == 0
    assert "already up" in proc.stdout


def test_job_api_requires_the_token(stack_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{stack_env['RAYLINE_RAY_DASHBOARD_PORT']}/api/jobs/"
    assert httpx.get(url, timeout=5).status_code == 401


def test_job_submit_follow_runs_the_job_and_returns_its_logs(stack_env: dict[str, str]) -> None:
    proc = rayline(stack_env, "job", "submit", "--follow", "--", "python", "-m", "jobs.hello", "--tasks", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result_line = next(line for line in proc.stdout.splitlines() if line.startswith("RAYLINE_RESULT "))
    result = json.loads(result_line.removeprefix("RAYLINE_RESULT "))
    assert result["squares"] == [0, 1, 4]
    assert "SUCCEEDED" in proc.stdout


def test_plain_ray_job_submit_works_with_rayline_env(stack_env: dict[str, str]) -> None:
    exports = rayline(stack_env, "env").stdout
    env = dict(stack_env)
    for line in exports.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    ray_bin = str(Path(sys.executable).parent / "ray")
    try:
        proc = subprocess.run([ray_bin, "job", "submit", "--working-dir", ".", "--", "python", "-m", "jobs.hello"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    finally:
        (ROOT / STAMP_FILE).unlink(missing_ok=True)   # written by `rayline env`; leave the checkout as it was
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(next(line for line in proc.stdout.splitlines()
                             if line.startswith("RAYLINE_RESULT ")).removeprefix("RAYLINE_RESULT "))
    # Ray uploads the tree without .git: the commit and dirty flag still arrive, from the stamp `rayline env` wrote
    here = from_git(ROOT)
    if here is not None:  # a git checkout (CI's clean clone, a developer's tree)
        assert result["source"] == {"git_commit": here.commit, "git_dirty": str(here.dirty).lower(),
                                    "git_source": "stamp"}


def test_following_a_job_into_a_pipe_writes_no_redraw_padding(stack_env: dict[str, str]) -> None:
    """A live display in the job (carriage-return redraws, cursor codes) lands in a pipe as its settled lines."""
    code = ("import sys\n"
            "for step in range(3):\n"
            "    sys.stdout.write(chr(27) + '[2K' + chr(13) + ' ' * 20000 + chr(13) + f'step {step}')\n"
            "    sys.stdout.flush()\n"
            "print()\nprint('done')\n")
    proc = rayline(stack_env, "job", "submit", "--follow", "--", "python", "-c", code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "step 2" in proc.stdout and "done" in proc.stdout
    assert " " * 100 not in proc.stdout and chr(13) not in proc.stdout and len(proc.stdout) < 5000, len(proc.stdout)


def test_ingest_submitted_as_a_ray_job_writes_a_version_into_the_catalog(stack_env: dict[str, str]) -> None:
    root = Path(stack_env["RAYLINE_STATE_DIR"]) / "datasets"
    proc = rayline(stack_env, "ingest", "--submit", "--follow", "--source", "examples/data/customers.csv",
                   "--contract", "examples/contracts/customers.yaml", "--dataset", "customers", "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(next(line for line in proc.stdout.splitlines()
                             if line.startswith("RAYLINE_RESULT ")).removeprefix("RAYLINE_RESULT "))
    assert Path(result["path"]).is_relative_to(root) and result["dataset"] == "customers"
    manifest = json.loads((Path(result["path"]) / "manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 3000
    assert manifest["counts"]["rows_in"] == (manifest["counts"]["rows_out"] + manifest["counts"]["rows_quarantined"]
                                             + manifest["counts"]["rows_deduplicated"])


def test_mlflow_logs_a_run_through_the_started_server(stack_env: dict[str, str]) -> None:
    code = (
        "import mlflow, sys\n"
        "mlflow.set_experiment('stack-test')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('x', 1.5)\n"
        "print(mlflow.get_run(run.info.run_id).data.metrics['x'])\n"
    )
    env = dict(stack_env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{stack_env['RAYLINE_MLFLOW_PORT']}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "1.5"


def node_resources(env: dict[str, str]) -> list[dict[str, float]]:
    """Each alive Ray node's total resources, from the GCS through the dashboard's state API (token auth)."""
    settings = stack_settings(env)
    resp = httpx.get(f"{settings.ray_dashboard_url}/api/v0/nodes", params={"detail": "true"}, timeout=10,
                     headers={"Authorization": f"Bearer {settings.ray_token()}"})
    nodes = resp.json()["data"]["result"]["result"]
    return [n["resources_total"] for n in nodes if n["state"] == "ALIVE"]


def test_up_with_nodes_starts_a_worker_raylet_with_its_own_resources(stack_env: dict[str, str]) -> None:
    cpus = sorted(r["CPU"] for r in node_resources(stack_env))
    assert cpus == [1.0, 2.0]
    assert sum(r.get("rayline_worker", 0) for r in node_resources(stack_env)) == 1.0
    state = load_state(stack_settings(stack_env))
    head, worker = state.components["ray"].pid, state.components["ray-worker-1"].pid
    raylets = [p for sid in (head, worker) for p in session_members(sid) if p.name() == "raylet"]
    assert len(raylets) == 2  # one raylet per node, each in its own recorded process session


def test_a_lost_worker_node_shows_down_and_up_starts_it_again(stack_env: dict[str, str]) -> None:
    settings = stack_settings(stack_env)
    worker = load_state(settings).components["ray-worker-1"]
    for proc in session_members(worker.pid):
        proc.kill()
    assert wait_until(lambda: "DOWN" in rayline(stack_env, "status").stdout, timeout_s=60)
    lost = rayline(stack_env, "status")
    assert lost.returncode == 1 and "ray-worker-1" in lost.stdout

    again = rayline(stack_env, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "restarted lost worker node(s): ray-worker-1" in again.stdout
    assert rayline(stack_env, "status").returncode == 0
    # The GCS declares the lost node dead only after its health checks fail for a while.
    assert wait_until(lambda: len(node_resources(stack_env)) == 2, timeout_s=90, interval_s=1)



def test_taken_port_gives_one_line_naming_the_port(stack_env: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = dict(stack_env, RAYLINE_STATE_DIR=stack_env["RAYLINE_STATE_DIR"] + "-other",
                   RAYLINE_MLFLOW_PORT=str(port))
        for key in ("RAYLINE_RAY_GCS_PORT", "RAYLINE_RAY_DASHBOARD_PORT", "RAYLINE_RAY_CLIENT_PORT",
                    "RAYLINE_RAY_METRICS_PORT", "RAYLINE_RAY_AGENT_PORT"):
            env[key] = str(free_port())
        proc = rayline(env, "up")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(port) in lines[0] and "--mlflow-port" in lines[0]


HOLD_CPUS = """
from ray import serve
serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})
@serve.deployment(ray_actor_options={{"num_cpus": 1.5}})
class Hold:
    def __call__(self, request):
        return "held"
serve.run(Hold.bind(), name="hold", route_prefix="/hold")
"""


@pytest.fixture(scope="module")
def hold_url(stack_env: dict[str, str]) -> str:
    """A Serve app (deployed by a job) holding 1.5 of the stack's 3 CPUs (a 2-CPU head and a 1-CPU worker node)."""
    port = free_port()
    held = rayline(stack_env, "job", "submit", "--follow", "--", "python", "-c", HOLD_CPUS.format(port=port))
    assert held.returncode == 0, held.stdout + held.stderr
    return f"http://127.0.0.1:{port}/hold"


def _listeners() -> dict[int, psutil.Process]:
    return {c.laddr.port: psutil.Process(c.pid) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid}


def test_serve_on_a_haproxy_stack_answers_through_haproxy_on_the_stacks_own_side_ports(
        stack_env: dict[str, str], hold_url: str) -> None:
    """The port clients call is HAProxy's, the replica serves HTTP itself behind it, and HAProxy's stats page is on
    the stack's ``serve_haproxy_stats_port``, not Ray's fixed 8404 (two clusters on a machine would collide)."""
    settings = stack_settings(stack_env)
    response = httpx.get(hold_url, timeout=30)
    assert response.status_code == 200 and response.text == "held"
    listeners = _listeners()
    haproxy = listeners[httpx.URL(hold_url).port]
    assert haproxy.name() == "haproxy", f"{hold_url} is served by {haproxy.name()}, not HAProxy"
    assert listeners[settings.serve_haproxy_stats_port].pid == haproxy.pid
    assert 8404 not in listeners or listeners[8404].pid != haproxy.pid
    assert any("ServeReplica:hold" in " ".join(p.cmdline()) for p in listeners.values()), \
        "the ingress replica serves HTTP itself (direct ingress) behind HAProxy"


def test_a_training_job_too_big_for_the_free_cpus_fails_fast_naming_the_figures(stack_env: dict[str, str],
                                                                                  hold_url: str) -> None:
    """With a Serve app holding 1.5 of the stack's 3 CPUs, a 2 × 1 CPU training job fails before submission, in one
    line.

    Runs just before `down`: the app keeps its CPUs for the rest of the module.
    """
    started = time.monotonic()
    proc = rayline(stack_env, "train", "examples/train/customers_mlp.yaml", "--submit", "-f")
    seconds = time.monotonic() - started
    # what an autoscaling cluster gets by default: a visible wait, bounded
    waited = rayline(stack_env, "train", "examples/train/customers_mlp.yaml", "--submit", "--wait-for-resources", "3")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("rayline: error:")]
    for figure in ("needs 2 CPU (2 workers × 1 CPU)", "1.5 of 3 CPU free", "Serve app 'hold' (Hold) 1.5 CPU",
                   "scaling.num_workers", "rayline up --num-cpus"):
        assert figure in line, line
    assert "submitted" not in proc.stdout and seconds < 60   # nothing was queued to wait forever
    assert waited.returncode == 5 and "cannot start after waiting 3 s" in waited.stderr, waited.stderr
    assert "waiting for resources: training job (run customers-mlp): it needs 2 CPU" in waited.stderr


SLOW_INGRESS = """
import asyncio, os
from ray import serve
@serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={{"num_cpus": 0.1}})
class Slow:
    async def __call__(self, request):
        await asyncio.sleep({hold_s})
        return {{"pid": os.getpid(), "i": int(request.query_params["i"])}}
serve.run(Slow.bind(), name="slow", route_prefix="/slow")
"""
HOLD_S = 2.0          # each request stays in flight on its ingress replica this long
IN_FLIGHT = 16        # requests sent together; leastconn gives each of the two replicas about half


def _haproxy_retries(metrics_port: int) -> float:
    """Retries plus redispatches HAProxy counted over its backends, from its Prometheus frontend (what the chart's
    PodMonitor scrapes on a serving pod)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return sample_sum(text, "haproxy_backend_retry_warnings_total", "haproxy_backend_redispatch_warnings_total")


def test_an_ingress_replica_killed_with_requests_in_flight_behind_haproxy_fails_none_of_them(
        stack_env: dict[str, str], hold_url: str) -> None:
    """Two ingress replicas, each holding requests; one is SIGKILLed: HAProxy sends its requests to the other.

    What a lost node does to the router replica on it. With Ray's default (``retry-on conn-failure``) every request
    the dead replica held fails (its client's connection closed without an answer: 8 of 16 in probes); rayline's
    ``empty-response`` retry (``cluster.serve_ingress.RETRY_ON``) replays them on the live replica, so all come back
    200, from the survivor, and HAProxy's Prometheus metrics count the retries. GETs: HAProxy replays only a
    request it holds whole, and a POST whose body came after its headers was already being forwarded (Ray's config
    streams bodies through); with POSTs 1 or 2 of ~8 still failed in probes."""
    deployed = rayline(stack_env, "job", "submit", "--follow", "--", "python", "-c",
                       SLOW_INGRESS.format(hold_s=HOLD_S))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = hold_url.rsplit("/", 1)[0] + "/slow"
    metrics_port = stack_settings(stack_env).serve_haproxy_metrics_port

    def call(i: int) -> httpx.Response | str:
        try:
            return httpx.get(url, params={"i": i}, timeout=60)
        except httpx.HTTPError as exc:   # Ray's default: the client's connection closed without an answer
            return type(exc).__name__

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        pids = {r.json()["pid"] for r in pool.map(call, range(IN_FLIGHT))}
        assert len(pids) == 2, f"both ingress replicas answered: {pids}"
        retries_before = _haproxy_retries(metrics_port)
        futures = [pool.submit(call, i) for i in range(IN_FLIGHT)]
        time.sleep(HOLD_S / 2)   # every request is in flight on its replica
        victim = min(pids)
        psutil.Process(victim).kill()   # SIGKILL
        answers = [f.result() for f in futures]
    statuses = [a if isinstance(a, str) else a.status_code for a in answers]
    assert statuses == [200] * IN_FLIGHT, statuses
    assert [a.json()["i"] for a in answers] == list(range(IN_FLIGHT))
    assert {a.json()["pid"] for a in answers} == pids - {victim}, "the live replica answered them all"
    assert _haproxy_retries(metrics_port) > retries_before, "HAProxy replayed the killed replica's requests"


def test_down_stops_everything_up_started_and_is_idempotent(stack_env: dict[str, str]) -> None:
    settings = load_settings(state_dir=stack_env["RAYLINE_STATE_DIR"])
    state = load_state(settings)
    assert state is not None
    sessions = [c.pid for c in state.components.values()]
    assert len(sessions) == 3 and all(session_members(s) for s in sessions)   # head, worker node, MLflow
    haproxy_port = stack_settings(stack_env).serve_haproxy_stats_port
    assert haproxy_port in _listeners()   # Serve's HAProxy, started by the Serve app of the CPU test
    proc = rayline(stack_env, "down")
    assert proc.returncode == 0 and "stopped" in proc.stdout
    assert not any(session_members(s) for s in sessions)
    assert wait_until(lambda: haproxy_port not in _listeners(), timeout_s=10), "HAProxy outlived the stack"
    again = rayline(stack_env, "down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    assert rayline(stack_env, "status").returncode == 1


@pytest.mark.parametrize("args", [[], ["up"], ["status"], ["down"], ["env"], ["job"], ["job", "submit"],
                                  ["job", "logs"], ["job", "status"], ["job", "list"]])
def test_help_works_for_every_command(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout

