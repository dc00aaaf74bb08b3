"""Deploying the serving app onto a running Ray cluster: one path for the CLI, the demo and tests.

Connects as a Ray driver with the stack's token, starts Serve's HTTP proxy on the configured
port, and runs the same application that ``deployments.app:build_app`` builds for
``serve deploy`` YAML and the Helm chart's RayService.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cluster.errors import RaylineError
from cluster.settings import Settings

APP_NAME = "rayline"
ROOT = Path(__file__).resolve().parent.parent


class ServeError(RaylineError):
    """The serving app could not be deployed or reached."""

    exit_code = 8


def serve_url(settings: Settings, url: str | None = None) -> str:
    return (url or f"http://{settings.host}:{settings.serve_http_port}").rstrip("/")


def connect(settings: Settings) -> None:
    """Join the stack's Ray as a driver (token auth), with this checkout importable by replicas."""
    import ray

    from cluster import stack

    if ray.is_initialized():
        return
    os.environ.update(stack.ray_env(settings))
    try:
        # Replica logs go to the cluster's log files (and `ray logs`), not to this driver's terminal.
        ray.init(address=str(settings.ray_address), logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}})
    except (ConnectionError, RuntimeError) as exc:
        raise ServeError(f"cannot reach Ray at {settings.ray_address} (is `rayline up` running?): {exc}") from None


def app_config(settings: Settings, model: str, baseline: str | None = None, candidate: str | None = None,
               **options: Any) -> Any:
    """The validated ``ServeAppConfig`` for MODEL on this stack (baseline defaults to @champion)."""
    from deployments.serve_config import parse_config

    return parse_config({
        "model_name": model, "baseline": baseline or f"models:/{model}@champion", "candidate": candidate,
        "tracking_uri": str(settings.mlflow_tracking_uri),
        "state_dir": str((settings.state_dir / "rollouts").absolute()), **options,
    })


def deploy(settings: Settings, cfg: Any, name: str = APP_NAME) -> str:
    """Run the app for ``cfg`` on Serve at ``settings.serve_http_port``; returns the base URL."""
    from ray import serve

    from deployments.app import build

    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    predict = settings.serve_predict_token.get_secret_value() if settings.serve_predict_token else None
    connect(settings)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.serve_http_port,
                              "request_timeout_s": cfg.request_timeout_s + 5},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    try:
        serve.run(build(cfg, admin_token=admin, predict_token=predict), name=name, route_prefix="/")
    except RuntimeError as exc:
        raise ServeError(f"deploying {name} failed: {str(exc).splitlines()[0]}") from None
    return serve_url(settings)
