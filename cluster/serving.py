"""Deploying the serving app onto a running Ray cluster: one path for the CLI, the demo and tests.

Connects as a Ray driver with the stack's token, starts Serve's HTTP proxy on the configured
port, and runs the same application that ``deployments.app:build_app`` builds for
``serve deploy`` YAML and the Helm chart's RayService. :func:`deploy_ready` waits until every
model version answers; :func:`ensure_serving` (re)deploys only when the running app does not
already serve the versions a rollout needs, and then keeps how the app was last deployed
(replicas, CPUs, limits: recorded under ``<state_dir>/serve/<name>.json``), changing only
the versions.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx

from cluster.errors import RaylineError
from cluster.files import atomic_write
from cluster.processes import wait_until
from cluster.settings import Settings

APP_NAME = "rayline"
LLM_APP_NAME = "llm"   # a language model's router app: its own Serve app beside the tabular one, under /llm
READY_TIMEOUT_S = 180.0
# What a rollout's redeploy sets itself rather than carrying over from the last deploy.
NOT_CARRIED = ("model_name", "baseline", "candidate", "tracking_uri", "state_dir", "rollouts_root", "controller",
               "traffic", "shadow")
ROOT = Path(__file__).resolve().parent.parent
STARTUP_ERROR = "MissingRequirements: "   # how a replica's missing-package error reads in Serve's failure message


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
        "state_dir": str(settings.state_dir.absolute()), "rollouts_root": settings.rollouts_root,
        **options,   # the store adds <model>
    })


def deploy(settings: Settings, cfg: Any, name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Run the app for ``cfg`` on Serve at ``settings.serve_http_port`` under ``route_prefix``; returns its base URL."""
    from ray import serve

    from deployments.app import build

    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    predict = settings.serve_predict_token.get_secret_value() if settings.serve_predict_token else None
    connect(settings)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # One HTTP proxy, on the head: the local stack's nodes share one address, where proxies on every
    # node would share the port (SO_REUSEPORT) and a lost node would take connections down with it.
    serve.start(proxy_location="HeadOnly",
                http_options={"host": settings.host, "port": settings.serve_http_port,
                              "request_timeout_s": cfg.request_timeout_s + 5},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    try:
        serve.run(build(cfg, admin_token=admin, predict_token=predict), name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        raise ServeError(f"deploying {name} failed: {startup_failure(name, str(exc))}") from None
    atomic_write(_deployed_record(settings, name), json.dumps(cfg.model_dump(mode="json"), indent=1))
    return serve_url(settings) + route_prefix.rstrip("/")


def startup_failure(app: str, error: str) -> str:
    """The one line that says why ``app`` failed to deploy (``error``: what ``serve.run`` raised).

    ``serve.run`` only says which deployment failed; the replica's own error sits in that deployment's
    status message, a traceback. A model's startup error (missing packages,
    ``models.pyfunc_model.MissingRequirements``) is picked out of it; otherwise ``error``'s first line.
    """
    from ray import serve

    try:
        deployments = serve.status().applications[app].deployments
    except (KeyError, RuntimeError):   # the app is gone, or Serve is
        deployments = {}
    for name, deployment in deployments.items():
        for line in (deployment.message or "").splitlines():
            if STARTUP_ERROR in line:
                return f"{name}: {line.split(STARTUP_ERROR, 1)[1].strip()}"
    return error.strip().splitlines()[0] if error.strip() else "unknown error"


def _deployed_record(settings: Settings, name: str) -> Path:
    return settings.state_dir / "serve" / f"{name}.json"


def deployed_options(settings: Settings, model: str, name: str = APP_NAME) -> dict[str, Any]:
    """How ``name`` was last deployed for ``model`` (replicas, CPUs, limits…), without its versions; {} if unknown."""
    try:
        record = json.loads(_deployed_record(settings, name).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("model_name") != model:
        return {}
    return {key: value for key, value in record.items() if key not in NOT_CARRIED}


def ready(url: str) -> bool:
    """True when the router at ``url`` answers ``/readyz`` with 200 (every model version answers)."""
    from cluster.stack import http_ok

    return http_ok(f"{url}/readyz", timeout_s=5.0)[0]


def waiting(url: str) -> dict[str, str]:
    """{variant: what to run} for the model versions the app at ``url`` still waits for (a fresh install
    without ``champion``: the app is up and answers 503 until the alias exists); {} when none or unknown."""
    try:
        body = httpx.get(f"{url}/readyz", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return dict(body.get("waiting") or {}) if isinstance(body, dict) else {}


def deploy_ready(settings: Settings, cfg: Any, name: str = APP_NAME, timeout_s: float = READY_TIMEOUT_S,
                 route_prefix: str = "/") -> str:
    """:func:`deploy`, then wait until every model version answers (or waits for its reference); the base URL."""
    url = deploy(settings, cfg, name, route_prefix)
    if not wait_until(lambda: ready(url), timeout_s=timeout_s, interval_s=0.5):
        raise ServeError(f"{name} at {url} was deployed but not ready within {timeout_s:.0f} s "
                         f"(see `rayline serve status` and the Serve replica logs)")
    return url


def served_versions(url: str, model: str) -> dict[str, str] | None:
    """{variant: version} that the router at ``url`` serves for ``model``; None when no app serves it there."""
    try:
        response = httpx.get(f"{url}/v1/models/{model}", timeout=10)
    except httpx.HTTPError:
        return None
    return dict(response.json()["versions"]) if response.status_code == 200 else None


def ensure_serving(settings: Settings, model: str, baseline: str, candidate: str, name: str = APP_NAME,
                   **options: Any) -> tuple[str, bool]:
    """Make the app serve ``baseline`` and ``candidate`` (``models:/`` URIs); (url, whether it was (re)deployed).

    Both are resolved in the registry first and the app is redeployed, pinned to those versions, only
    when it does not serve exactly them already: a running rollout's app is left alone. A redeploy
    keeps the options the app was last deployed with (``options`` override them).
    """
    from cluster.registry import Registry

    registry = Registry(settings)
    wanted = {"baseline": registry.resolve(baseline).version, "candidate": registry.resolve(candidate).version}
    url = serve_url(settings)
    if served_versions(url, model) == wanted:
        return url, False
    cfg = app_config(settings, model, f"models:/{model}/{wanted['baseline']}",
                     f"models:/{model}/{wanted['candidate']}", **{**deployed_options(settings, model, name), **options})
    return deploy_ready(settings, cfg, name), True
