"""The embedded local stack: a Ray head (plus optional worker nodes) and an MLflow server on 127.0.0.1.

``up`` starts them, waits until they answer, and records PIDs, session ids, ports and
URLs in ``<state_dir>/stack.json``. With ``nodes > 1`` it starts a multi-node Ray cluster
on this one machine the way Ray's own tests do: each worker node is a ``ray start
--address`` of its own (its own raylet, object store, agents, worker processes and CPUs),
so placement and node loss are real. ``status`` checks real health endpoints, every
node included. ``down`` stops exactly the processes ``up`` started (by their recorded
session) and is idempotent. Ray token authentication stays on: a token file is
generated in the state directory and every rayline client passes it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from cluster.errors import ConfigError, PortInUseError, StackError
from cluster.files import atomic_write
from cluster.processes import (
    free_port,
    port_is_free,
    process_alive,
    session_members,
    start_detached,
    tcp_reachable,
    terminate,
    wait_until,
)
from cluster.serve_ingress import Ingress, ingress_env
from cluster.settings import Settings

STATE_FILE = "stack.json"
RAY_START_TIMEOUT_S = 90.0
MLFLOW_START_TIMEOUT_S = 90.0
RAY_OBJECT_STORE_BYTES = 512 * 1024**2
WORKER_OBJECT_STORE_BYTES = 256 * 1024**2
RAY_HEAD = "ray"
WORKER_PREFIX = "ray-worker-"
WORKER_RESOURCE = "rayline_worker"   # every worker node has 1: a deployment can ask for a share to stay off the head
RAY_WORKER_PORTS = (10002, 19999)  # ray start's default --min/--max-worker-port


@dataclass
class Component:
    name: str
    pid: int
    create_time: float
    ports: dict[str, int]
    urls: dict[str, str]
    log: str
    command: list[str] = field(default_factory=list)   # how it was started (a lost worker node restarts so)

    def alive(self) -> bool:
        return process_alive(self.pid, self.create_time)


@dataclass
class StackState:
    components: dict[str, Component] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({"started_at": self.started_at,
                           "components": {k: asdict(v) for k, v in self.components.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        data = json.loads(text)
        return cls(components={k: Component(**v) for k, v in data["components"].items()},
                   started_at=data["started_at"])


@dataclass(frozen=True)
class Health:
    component: str
    check: str
    ok: bool
    detail: str


def _bin(name: str) -> str:
    """A console script from the running interpreter's environment (the project venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def state_path(settings: Settings) -> Path:
    return settings.state_dir / STATE_FILE


def load_state(settings: Settings) -> StackState | None:
    path = state_path(settings)
    if not path.is_file():
        return None
    return StackState.from_json(path.read_text())


def _save_state(settings: Settings, state: StackState) -> None:
    atomic_write(state_path(settings), state.to_json())


def ensure_token(settings: Settings) -> str:
    """Return the Ray auth token, generating a 0600 token file in the state dir if needed."""
    token = settings.ray_token()
    if token:
        return token
    path = Path(str(settings.ray_auth_token_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def _check_ports(settings: Settings) -> None:
    wanted = {
        "ray_gcs_port": settings.ray_gcs_port,
        "ray_dashboard_port": settings.ray_dashboard_port,
        "ray_client_port": settings.ray_client_port,
        "ray_metrics_port": settings.ray_metrics_port,
        "ray_agent_port": settings.ray_agent_port,
        "mlflow_port": settings.mlflow_port,
    }
    if settings.serve_ingress == Ingress.HAPROXY:
        wanted |= {"serve_haproxy_stats_port": settings.serve_haproxy_stats_port,
                   "serve_haproxy_metrics_port": settings.serve_haproxy_metrics_port}
    for name, port in wanted.items():
        if name.startswith("ray_") and RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1]:
            raise ConfigError(
                f"{name}={port} falls in Ray's worker port range {RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}; "
                f"choose a port outside it"
            )
        if not port_is_free(settings.host, port):
            flag = "--" + name.replace("_", "-")
            raise PortInUseError(
                f"port {port} ({name}) on {settings.host} is already in use; "
                f"choose another with `rayline up {flag} N` or RAYLINE_{name.upper()}=N"
            )


def ray_head_command(settings: Settings) -> list[str]:
    cmd = [
        _bin("ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--node-ip-address={settings.host}",
        f"--port={settings.ray_gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={settings.host}",
        f"--dashboard-port={settings.ray_dashboard_port}",
        f"--ray-client-server-port={settings.ray_client_port}",
        f"--metrics-export-port={settings.ray_metrics_port}",
        f"--dashboard-agent-listen-port={settings.ray_agent_port}",
        f"--object-store-memory={RAY_OBJECT_STORE_BYTES}",
    ]
    if settings.ray_num_cpus:
        cmd.append(f"--num-cpus={settings.ray_num_cpus}")
    return cmd


def worker_temp_dir(settings: Settings, index: int) -> Path:
    """Worker node ``index``'s own Ray temp dir (session, logs, runtime envs), short for Ray's socket paths."""
    return Path(tempfile.gettempdir()) / "rayline" / f"{settings.ray_gcs_port}-w{index}"


def ray_worker_command(settings: Settings, index: int, agent_port: int, num_cpus: int | None) -> list[str]:
    """Worker node ``index`` joining the head: its own raylet, CPUs and ports (Ray's tests' ``Cluster.add_node``).

    All nodes share this machine's address, so each worker gets its own agent port (the
    default one is the head's) and random worker ports, as ``ray.cluster_utils`` does, and
    its own temp dir, as on a machine of its own: in a shared one the nodes' runtime-env
    agents each re-extract a job's working_dir into the same folder, deleting it from under
    the job's driver (seen: a training job's driver lost its working directory).
    """
    cmd = [
        _bin("ray"), "start", "--block", "--disable-usage-stats",
        f"--address={settings.host}:{settings.ray_gcs_port}",
        f"--node-ip-address={settings.host}",
        f"--temp-dir={worker_temp_dir(settings, index)}",
        f"--dashboard-agent-listen-port={agent_port}",
        "--min-worker-port=0", "--max-worker-port=0",
        f"--object-store-memory={WORKER_OBJECT_STORE_BYTES}",
        f"--resources={json.dumps({WORKER_RESOURCE: 1})}",
    ]
    if num_cpus:
        cmd.append(f"--num-cpus={num_cpus}")
    return cmd


def mlflow_command(settings: Settings, port: int | None = None) -> list[str]:
    """The MLflow tracking + registry server on SQLite with a local artifact root."""
    state = settings.state_dir.absolute()
    return [
        _bin("mlflow"), "server",
        "--host", settings.host,
        "--port", str(port or settings.mlflow_port),
        "--workers", str(settings.mlflow_workers),
        "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
        "--artifacts-destination", str(state / "mlartifacts"),
        "--serve-artifacts",
    ]


MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_healthy(tracking_uri: str) -> bool:
    return http_ok(f"{tracking_uri}/health")[0]


def start_mlflow(settings: Settings, log_file: Path, timeout_s: float = MLFLOW_START_TIMEOUT_S) -> subprocess.Popen:
    """Start an MLflow server for ``settings`` on its own and wait until ``/health`` answers (tests, benchmarks)."""
    proc = start_detached(mlflow_command(settings), log_file, env=MLFLOW_ENV)
    if not wait_until(lambda: mlflow_healthy(str(settings.mlflow_tracking_uri)), timeout_s=timeout_s):
        terminate(session_members(proc.pid), grace_s=5)
        raise StackError(f"MLflow did not start within {timeout_s:.0f} s; see {log_file}")
    return proc


def ray_env(settings: Settings) -> dict[str, str]:
    """Environment for Ray processes and clients of this stack (token auth on, Serve's ingress).

    The interpreter's own bin dir goes first on PATH, so a job entrypoint's ``python``
    is the environment rayline runs in, whether or not the venv is activated.
    """
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(Path(str(settings.ray_auth_token_path)).absolute()),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        **ingress_env(settings.serve_ingress, settings.serve_haproxy_stats_port, settings.serve_haproxy_metrics_port),
    }


def _component(name: str, proc, ports: dict[str, int], urls: dict[str, str], log: Path) -> Component:
    return Component(name=name, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                     ports=ports, urls=urls, log=str(log), command=list(proc.args))


def up(settings: Settings, nodes: int = 1, worker_cpus: int | None = None) -> tuple[StackState, bool]:
    """Start the stack: a Ray head, ``nodes - 1`` worker nodes and MLflow.

    ``worker_cpus`` is each worker node's CPU count (default: the head's ``ray_num_cpus``,
    else Ray's own count). Returns (state, started); ``started`` is False when it was already up.
    """
    if nodes < 1:
        raise ConfigError(f"invalid 'nodes': {nodes}; a cluster has at least one node (the head)")
    existing = load_state(settings)
    if existing and any(c.alive() for c in existing.components.values()):
        return existing, False
    _check_ports(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_token(settings)
    logs = settings.state_dir / "logs"
    state = StackState()
    try:
        ray_proc = start_detached(ray_head_command(settings), logs / "ray-head.log", env=ray_env(settings))
        state.components[RAY_HEAD] = _component(
            RAY_HEAD, ray_proc,
            {"gcs": settings.ray_gcs_port, "dashboard": settings.ray_dashboard_port,
             "client": settings.ray_client_port, "metrics": settings.ray_metrics_port,
             "agent": settings.ray_agent_port},
            {"address": str(settings.ray_address), "dashboard": str(settings.ray_dashboard_url)},
            logs / "ray-head.log",
        )
        ml_proc = start_detached(mlflow_command(settings), logs / "mlflow.log", env=MLFLOW_ENV)
        state.components["mlflow"] = _component(
            "mlflow", ml_proc, {"http": settings.mlflow_port},
            {"tracking": str(settings.mlflow_tracking_uri)}, logs / "mlflow.log",
        )
        _save_state(settings, state)
        _wait_healthy(settings, state, [RAY_HEAD])
        for index in range(1, nodes):
            # One at a time, each registered before the next starts, as ray.cluster_utils does:
            # raylets starting together on one address race for the same ports and log names.
            name = _start_worker(settings, state, index, worker_cpus or settings.ray_num_cpus)
            _save_state(settings, state)
            _wait_healthy(settings, state, [name])
        _wait_healthy(settings, state, list(state.components))
    except BaseException:
        down(settings)
        raise
    return state, True


def _start_worker(settings: Settings, state: StackState, index: int, num_cpus: int | None) -> str:
    """Start worker node ``index`` (its own process session) and record it as ``ray-worker-<index>``."""
    name = f"{WORKER_PREFIX}{index}"
    log = settings.state_dir / "logs" / f"{name}.log"
    agent_port = free_port(settings.host)
    proc = start_detached(ray_worker_command(settings, index, agent_port, num_cpus), log, env=ray_env(settings))
    state.components[name] = _component(name, proc, {"agent": agent_port},
                                        {"address": str(settings.ray_address),
                                         "temp_dir": str(worker_temp_dir(settings, index))}, log)
    return name


def restart_lost_nodes(settings: Settings) -> list[str]:
    """Start again every recorded worker node whose raylet is gone (killed, crashed); returns their names.

    What is left of a lost node's process session is stopped first; the node comes back with the
    command it was started with (same CPUs and resources), as a new Ray node.
    """
    state = load_state(settings)
    if state is None or not state.components[RAY_HEAD].alive():
        return []
    lost = [name for name in worker_names(state) if raylet_node_id(state.components[name].pid) is None]
    for name in lost:
        comp = state.components[name]
        terminate(session_members(comp.pid), grace_s=5)
        proc = start_detached(comp.command, Path(comp.log), env=ray_env(settings))
        state.components[name] = _component(name, proc, comp.ports, comp.urls, Path(comp.log))
        _save_state(settings, state)
        _wait_healthy(settings, state, [name])
    return lost


def worker_names(state: StackState) -> list[str]:
    return [name for name in state.components if name.startswith(WORKER_PREFIX)]


def _wait_healthy(settings: Settings, state: StackState, names: list[str]) -> None:
    deadline = time.monotonic() + max(RAY_START_TIMEOUT_S, MLFLOW_START_TIMEOUT_S)
    pending = set(names)
    while pending and time.monotonic() < deadline:
        health = status(settings, state)
        for name in list(pending):
            comp = state.components[name]
            if not comp.alive():
                tail = _tail(Path(comp.log))
                raise StackError(f"{name} exited during start-up; last log lines: {tail}")
            if all(h.ok for h in health if h.component == name):
                pending.discard(name)
        time.sleep(0.5)
    if pending:
        raise StackError(f"timed out waiting for {', '.join(sorted(pending))} to become healthy "
                         f"(logs in {settings.state_dir / 'logs'})")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str, headers: dict[str, str] | None = None, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(answered 200, one line saying what it answered): the health probe of every rayline check."""
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}"
    return resp.status_code == 200, f"{url}: HTTP {resp.status_code}"


def status(settings: Settings, state: StackState | None = None) -> list[Health]:
    """Health of each component from its real endpoints (works for remote addresses too).

    When the local stack has worker nodes (recorded in its state), each one is checked too:
    its raylet must run and Ray's GCS must list that node as alive.
    """
    checks: list[Health] = []
    host, _, port = str(settings.ray_address).rpartition(":")
    gcs_ok = port.isdigit() and tcp_reachable(host.split("//")[-1], int(port))
    reach = "reachable" if gcs_ok else "unreachable"
    checks.append(Health(RAY_HEAD, "ray-gcs", gcs_ok, f"{settings.ray_address} {reach}"))
    token = settings.ray_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ok, detail = http_ok(f"{settings.ray_dashboard_url}/api/jobs/", headers)
    checks.append(Health(RAY_HEAD, "ray-job-api", ok, detail))
    if _is_local(settings):
        # Jobs are handed to the head node's agent; until it answers, submissions fail
        # with "No available agent", so a stack is not up before the agent is.
        ok, detail = http_ok(f"http://{settings.host}:{settings.ray_agent_port}/api/healthz", headers)
        checks.append(Health(RAY_HEAD, "ray-job-agent", ok, detail))
    state = state if state is not None else (load_state(settings) if _is_local(settings) else None)
    workers = worker_names(state) if state else []
    if workers:
        checks += _node_checks(settings, state, workers, headers)
    ok, detail = http_ok(f"{settings.mlflow_tracking_uri}/health")
    checks.append(Health("mlflow", "mlflow-health", ok, detail))
    return checks


def raylet_node_id(sid: int) -> str | None:
    """The Ray node id of the raylet in process session ``sid`` (from its ``--node_id`` argument)."""
    for proc in session_members(sid):
        try:
            args = proc.cmdline()
        except psutil.Error:
            continue
        if args and Path(args[0]).name == "raylet":
            return next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), None)
    return None


def alive_node_ids(settings: Settings, headers: dict[str, str] | None) -> set[str] | None:
    """Node ids Ray's GCS lists as ALIVE (through the dashboard's state API); None when it does not answer."""
    try:
        resp = httpx.get(f"{settings.ray_dashboard_url}/api/v0/nodes", params={"limit": 1000},
                         headers=headers, timeout=5.0)
        nodes = resp.json()["data"]["result"]["result"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return {n["node_id"] for n in nodes if n.get("state") == "ALIVE"}


def _node_checks(settings: Settings, state: StackState, workers: list[str],
                 headers: dict[str, str] | None) -> list[Health]:
    alive = alive_node_ids(settings, headers)
    checks = []
    for name in workers:
        node_id = raylet_node_id(state.components[name].pid)
        if node_id is None:
            checks.append(Health(name, "ray-node", False, f"{name}: no raylet running"))
        elif alive is None:
            checks.append(Health(name, "ray-node", False, f"{name}: GCS node table unavailable"))
        else:
            registered = "alive in GCS" if node_id in alive else "not alive in GCS"
            checks.append(Health(name, "ray-node", node_id in alive, f"{name} node {node_id[:12]}… {registered}"))
    return checks


def _is_local(settings: Settings) -> bool:
    """True when the dashboard is the local stack's (the agent port is only reachable there)."""
    return str(settings.ray_dashboard_url) == f"http://{settings.host}:{settings.ray_dashboard_port}"


def down(settings: Settings) -> list[int]:
    """Stop every process the recorded components started. Idempotent; returns PIDs stopped."""
    state = load_state(settings)
    if state is None:
        return []
    stopped: list[int] = []
    for comp in reversed(state.components.values()):  # worker nodes before the head they joined
        # The leader's PID is its session id. Linux does not reuse a PID while it still names
        # a live session, so this finds Ray's GCS, raylet, dashboard and workers even when
        # the leader itself already died, and never anybody else's processes.
        stopped += terminate(session_members(comp.pid))
    state_path(settings).unlink(missing_ok=True)
    return stopped


def our_processes(settings: Settings) -> list[psutil.Process]:
    """Live processes belonging to the recorded stack (empty when down)."""
    state = load_state(settings)
    if state is None:
        return []
    return [p for c in state.components.values() for p in session_members(c.pid)]
