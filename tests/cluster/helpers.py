"""The ``rayline`` CLI run as a subprocess and private local stacks, shared by the stack and fault tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def rayline(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``rayline ARGS`` in a fresh interpreter with ``env``: exit code and output as a user sees them."""
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def stack_env(state_dir: Path, **settings: str) -> dict[str, str]:
    """Environment for a private ``rayline up`` stack in ``state_dir`` on free ports.

    Inherited ``RAYLINE_*``, ``RAY_*`` and ``MLFLOW_*`` variables are dropped, so the stack is
    the test's own; ``settings`` adds ``RAYLINE_<NAME>`` values (e.g. ``ray_num_cpus="2"``).
    """
    from cluster.processes import free_port, free_static_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLINE_", "RAY_", "MLFLOW_"))}
    env["RAYLINE_STATE_DIR"] = str(state_dir)
    for name in ("RAY_GCS", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_METRICS", "RAY_AGENT", "MLFLOW"):
        env[f"RAYLINE_{name}_PORT"] = str(free_port())
    for name in ("SERVE_HAPROXY_STATS", "SERVE_HAPROXY_METRICS"):   # bound late, after Ray's many connections
        env[f"RAYLINE_{name}_PORT"] = str(free_static_port())
    env.update({f"RAYLINE_{name.upper()}": value for name, value in settings.items()})
    return env


def stack_settings(env: dict[str, str]):
    """The Settings a ``rayline`` command run with ``env`` resolves."""
    from cluster.settings import load_settings

    return load_settings(**{k.removeprefix("RAYLINE_").lower(): v for k, v in env.items() if k.startswith("RAYLINE_")})


@dataclass
class LocalCluster:
    """A running ``rayline up --nodes N`` stack, reached from outside the way users reach it.

    The test process never joins it as a Ray driver (it may be the session Ray's driver
    already): nodes are the recorded process sessions, placement comes from the dashboard's
    REST API, and a node is lost by killing every process of its session.
    """

    env: dict[str, str]
    settings: Any

    def components(self) -> dict[str, Any]:
        from cluster.stack import load_state

        return load_state(self.settings).components

    def node_of(self, pid: int) -> str | None:
        """The stack node (``ray``, ``ray-worker-<i>``) whose process session ``pid`` belongs to."""
        try:
            sid = os.getsid(pid)
        except OSError:
            return None
        return next((name for name, c in self.components().items() if c.pid == sid and name.startswith("ray")), None)

    def kill_node(self, name: str) -> list[int]:
        """Lose node ``name`` at once: SIGKILL its raylet, agents, worker processes and ``ray start`` leader."""
        from cluster.processes import session_members

        procs = session_members(self.components()[name].pid)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        return [p.pid for p in procs]

    def restart_lost_nodes(self) -> str:
        """``rayline up`` again: it starts every lost worker node anew; its output."""
        proc = rayline(self.env, "up")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def serve_replicas(self, app: str, deployment: str) -> list[dict[str, Any]]:
        """Serve's replicas of ``deployment`` (state, pid, node_id …) from the dashboard's Serve REST API."""
        response = httpx.get(f"{self.settings.ray_dashboard_url}/api/serve/applications/", timeout=10,
                             headers={"Authorization": f"Bearer {self.settings.ray_token()}"})
        response.raise_for_status()
        apps = response.json().get("applications") or {}
        return list(apps.get(app, {}).get("deployments", {}).get(deployment, {}).get("replicas", []))

    def running_replicas(self, app: str, deployment: str) -> list[dict[str, Any]]:
        return [r for r in self.serve_replicas(app, deployment) if r.get("state") == "RUNNING"]


@contextlib.contextmanager
def local_cluster(state_dir: Path, nodes: int, head_cpus: int, worker_cpus: int,
                  extra_env: dict[str, str] | None = None, **settings: str) -> Iterator[LocalCluster]:
    """``rayline up --nodes N`` in ``state_dir`` on free ports for a ``with`` block, always brought down.

    Free ports are picked before Ray's processes start and bind random ports of their own, so one
    can be taken in between ("address already in use"): then it tries once more on other ports.
    """
    for attempt in range(2):
        env = {**stack_env(state_dir, ray_num_cpus=str(head_cpus), **settings), **(extra_env or {})}
        proc = rayline(env, "up", "--nodes", str(nodes), "--worker-cpus", str(worker_cpus))
        if proc.returncode == 0 or attempt == 1 or "already in use" not in proc.stderr:
            break
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield LocalCluster(env, stack_settings(env))
    finally:
        stack_down(env)


def stack_down(env: dict[str, str]) -> None:
    """``rayline down``, then remove the worker nodes' own Ray temp dirs (their logs): tests leave no trace."""
    import shutil

    from cluster.stack import worker_temp_dir

    rayline(env, "down")
    settings = stack_settings(env)
    for folder in worker_temp_dir(settings, 1).parent.glob(f"{settings.ray_gcs_port}-w*"):
        shutil.rmtree(folder, ignore_errors=True)
