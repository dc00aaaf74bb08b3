"""The embedded local stack: a Ray head and an MLflow server on 127.0.0.1.

``up`` starts both, waits until they answer, and records PIDs, session ids, ports and
URLs in ``<state_dir>/stack.json``. ``status`` checks real health endpoints. ``down``
stops exactly the processes ``up`` started (by their recorded session) and is
idempotent. Ray token authentication stays on: a token file is generated in the state
directory and every rayline client passes it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from cluster.errors import ConfigError, PortInUseError, StackError
from cluster.files import atomic_write
from cluster.processes import (
    port_is_free,
    process_alive,
    session_members,
    start_detached,
    tcp_reachable,
    terminate,
    wait_until,
)
from cluster.settings import Settings

STATE_FILE = "stack.json"
RAY_START_TIMEOUT_S = 90.0
MLFLOW_START_TIMEOUT_S = 90.0
RAY_OBJECT_STORE_BYTES = 512 * 1024**2
RAY_WORKER_PORTS = (10002, 19999)  # ray start's default --min/--max-worker-port


@dataclass
class Component:
    name: str
    pid: int
    create_time: float
    ports: dict[str, int]
    urls: dict[str, str]
    log: str

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
    """Environment for Ray processes and clients of this stack (token auth on).

    The interpreter's own bin dir goes first on PATH, so a job entrypoint's ``python``
    is the environment rayline runs in, whether or not the venv is activated.
    """
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(Path(str(settings.ray_auth_token_path)).absolute()),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }


def _component(name: str, proc, ports: dict[str, int], urls: dict[str, str], log: Path) -> Component:
    return Component(name=name, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                     ports=ports, urls=urls, log=str(log))


def up(settings: Settings) -> tuple[StackState, bool]:
    """Start the stack. Returns (state, started); ``started`` is False when it was already up."""
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
        state.components["ray"] = _component(
            "ray", ray_proc,
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
        _wait_healthy(settings, state)
    except BaseException:
        down(settings)
        raise
    return state, True


def _wait_healthy(settings: Settings, state: StackState) -> None:
    waits = {"ray": RAY_START_TIMEOUT_S, "mlflow": MLFLOW_START_TIMEOUT_S}
    deadline = time.monotonic() + max(waits.values())
    pending = set(waits)
    while pending and time.monotonic() < deadline:
        health = {h.check: h for h in status(settings)}
        for name in list(pending):
            comp = state.components[name]
            if not comp.alive():
                tail = _tail(Path(comp.log))
                raise StackError(f"{name} exited during start-up; last log lines: {tail}")
            if all(h.ok for h in health.values() if h.component == name):
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


def status(settings: Settings) -> list[Health]:
    """Health of each component from its real endpoints (works for remote addresses too)."""
    checks: list[Health] = []
    host, _, port = str(settings.ray_address).rpartition(":")
    gcs_ok = port.isdigit() and tcp_reachable(host.split("//")[-1], int(port))
    reach = "reachable" if gcs_ok else "unreachable"
    checks.append(Health("ray", "ray-gcs", gcs_ok, f"{settings.ray_address} {reach}"))
    token = settings.ray_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ok, detail = http_ok(f"{settings.ray_dashboard_url}/api/jobs/", headers)
    checks.append(Health("ray", "ray-job-api", ok, detail))
    if _is_local(settings):
        # Jobs are handed to the head node's agent; until it answers, submissions fail
        # with "No available agent", so a stack is not up before the agent is.
        ok, detail = http_ok(f"http://{settings.host}:{settings.ray_agent_port}/api/healthz", headers)
        checks.append(Health("ray", "ray-job-agent", ok, detail))
    ok, detail = http_ok(f"{settings.mlflow_tracking_uri}/health")
    checks.append(Health("mlflow", "mlflow-health", ok, detail))
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
    for comp in state.components.values():
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
