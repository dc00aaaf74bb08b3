"""Shared fixtures: one real Ray instance, one real MLflow server and one S3 server per test session.

Starting Ray costs 5–8 s and each MLflow server ~9 s on 2 cores, so they are shared;
every test that uses them must leave them usable (unique names, no global teardown).
Nothing here is mocked.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".tools" / "torch_extensions"))

from cluster import local_ray  # noqa: E402
from cluster.processes import free_port, session_members, terminate  # noqa: E402
from cluster.settings import CONFIG_ENV, Settings, load_settings  # noqa: E402
from cluster.stack import mlflow_healthy, start_mlflow  # noqa: E402
from tests import shared_guard  # noqa: E402
from tests.storage.helpers import CREDENTIALS as S3_CREDENTIALS  # noqa: E402
from tests.storage.helpers import S3Server  # noqa: E402

shared_guard.install()   # no test may read ../shared (CI has it, users do not): it fails here as it would for them

RAY_TEST_CPUS = 4  # logical CPUs: 2 train workers + Ray Data / Serve replicas on a 2-core box


@pytest.fixture(autouse=True)
def _config_file_does_not_leak() -> Iterator[None]:
    """``load_settings(config_file)`` exports the file's path for child processes (jobs, the CLI);
    a test that passes one must not leave every later test reading that file's settings."""
    before = os.environ.get(CONFIG_ENV)
    yield
    if before is None:
        os.environ.pop(CONFIG_ENV, None)
    else:
        os.environ[CONFIG_ENV] = before


class MlflowServer:
    """A real ``mlflow server`` (SQLite + local artifacts) that tests may stop and restart."""

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.settings = load_settings(state_dir=state_dir, mlflow_port=port)
        self.uri = str(self.settings.mlflow_tracking_uri)
        self.pid: int | None = None

    def start(self) -> None:
        self.pid = start_mlflow(self.settings, self.state_dir / "mlflow.log").pid

    def stop(self) -> None:
        if self.pid is not None:
            terminate(session_members(self.pid), grace_s=5)
            self.pid = None

    def healthy(self) -> bool:
        return mlflow_healthy(self.uri)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), free_port())
    server.start()
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the session's MLflow server and a private state dir."""
    state = tmp_path_factory.mktemp("state")
    return load_settings(
        state_dir=state,
        mlflow_tracking_uri=mlflow_server.uri,
        datasets_root=str(state / "datasets"),
        checkpoints_root=str(state / "checkpoints"),
        log_format="text",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for every S3 test; AWS_* point at it only inside a test that asks for ``s3``."""
    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The session's S3 server, with the AWS variables and RAYLINE_S3_ENDPOINT_URL set for this test."""
    from cluster import files

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(files.S3_ENDPOINT_ENV, s3_server.endpoint)
    files.configure(endpoint_url=s3_server.endpoint)
    yield s3_server
    files.configure()


RAY_METRICS_PORT = free_port()
METRICS_REPORT_INTERVAL_MS = 2000  # Ray's default is 10 s: the Prometheus tests would wait that long per change
RAY_START_ATTEMPTS = 2


@pytest.fixture(scope="session")
def serve_url(ray_cluster: None) -> Iterator[str]:
    """Serve on a free port of the session's Ray, one instance for every suite; its base URL.

    Suites deploy their own named apps on it and delete them when done.
    """
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def ray_metrics_port(ray_cluster: None) -> int:
    """Where the session's Ray exports its Prometheus metrics (Serve's and ours included)."""
    return RAY_METRICS_PORT


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for the whole session (address='local': never a stale cluster)."""
    import ray

    for attempt in range(RAY_START_ATTEMPTS):
        try:
            _start_ray()
            break
        except Exception:  # "node timed out during startup" on an overloaded machine: try once more
            ray.shutdown()
            if attempt == RAY_START_ATTEMPTS - 1:
                raise
    yield
    started = _ray_processes()
    ray.shutdown()
    # Ray's workers exit with their raylet; one stuck in a call outlives it (a Train controller was found alive
    # 20 minutes after a CI run, 2026-12-01). Whatever of this instance is left after 10 s is stopped.
    _, left = psutil.wait_procs(started, timeout=10)
    terminate(left, grace_s=5)


def _ray_processes() -> list[psutil.Process]:
    """This process's Ray instance: the raylet, GCS and workers it started (its descendants named ``ray::...`` or
    run from Ray's package), not the MLflow or S3 servers the session also started."""
    import ray

    package = os.path.dirname(ray.__file__) + os.sep
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if cmdline and (cmdline[0].startswith("ray::") or any(part.startswith(package) for part in cmdline)):
                found.append(proc)
    return found


def _start_ray() -> None:
    local_ray.start(  # no dashboard: local_ray's worker env spares each fit() Ray Train's 12 s cleaner stall
        RAY_TEST_CPUS,
        env={"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]},
        _metrics_export_port=RAY_METRICS_PORT,
        object_store_memory=512 * 1024**2,
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
