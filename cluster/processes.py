"""Process and port helpers for the local stack: start detached, find our tree, stop it by PID.

Each component is started in a new session (``setsid``), so the session id recorded at
start-up identifies every process it spawned (Ray's GCS, raylet, dashboard, workers)
without touching anybody else's Ray or MLflow on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for tests and ephemeral servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Below the OS's ephemeral range (Linux: 32768-60999) and above Ray's worker ports (10002-19999), below Serve's
# direct-ingress replica ports (30000-31000): a port here is only ever taken by an explicit bind.
STATIC_PORTS = (20000, 29999)


def free_static_port(host: str = "127.0.0.1") -> int:
    """A free port outside the ephemeral range, for a server that starts after other processes have started.

    :func:`free_port` hands out an ephemeral port; between choosing it and the server binding it, any process
    that connects somewhere (Ray's start opens dozens of connections) can be given the same port by the OS.
    Measured: HAProxy's stats port chosen that way was taken before HAProxy started, and Serve failed."""
    for port in random.sample(range(STATIC_PORTS[0], STATIC_PORTS[1] + 1), 200):
        if port_is_free(host, port):
            return port
    raise OSError(f"no free port in {STATIC_PORTS[0]}-{STATIC_PORTS[1]} on {host}")


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_detached(cmd: Sequence[str], log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session with output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def process_alive(pid: int, create_time: float | None = None) -> bool:
    """True when ``pid`` runs and (if given) is the same process we started, not a reused PID."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def session_members(sid: int) -> list[psutil.Process]:
    """Every live process in session ``sid`` (our component and all it spawned)."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def terminate(processes: Iterable[psutil.Process], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left. Returns the PIDs stopped."""
    procs = [p for p in processes if p.is_running()]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def wait_until(check, timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``check()`` until it is truthy or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return bool(check())
