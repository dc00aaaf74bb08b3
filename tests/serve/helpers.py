"""Registered test models and a deployed serving app, for the serve and rollout suites.

Models are real: a tiny ``TabularMLP`` logged with ``models.packaging.log_model`` and a
hand-built :class:`Preprocessing` (three numeric fields with contract rules and one categorical), registered
in the session's MLflow server. Apps are real Serve applications reached over HTTP.
Their replicas' JSON log lines are read back from the Ray session's Serve log files.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from cluster.registry import Registry
from cluster.settings import Settings
from models.preprocessing import Preprocessing

ADMIN_TOKEN = "test-admin-token"
COLORS = ("red", "green", "blue")
PREPROCESSING = Preprocessing.from_manifest({
    "target": "label",
    "task": "classification",
    "classes": ["no", "yes"],
    "features": [
        {"name": "x1", "kind": "numeric", "minimum": -100, "maximum": 100},   # as ingest writes the contract's rules
        {"name": "x2", "kind": "numeric", "clip": [-3.0, 3.0]},   # outliers clipped in training
        {"name": "x3", "kind": "numeric", "integer": True, "minimum": 0, "maximum": 50},
        {"name": "color", "kind": "categorical", "encoding": "onehot", "vocabulary": list(COLORS),
         "columns": [f"color={c}" for c in COLORS]},
    ],
    "normalization": {"x1": {"mean": 1.0, "std": 2.0}, "x2": {"mean": 0.0, "std": 1.0},
                      "x3": {"mean": 10.0, "std": 5.0}},
    "dataset": "serve-test",
    "version": "v1",
})


def instance(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid request instance (varied by ``i``)."""
    return {"x1": float(i % 7), "x2": (i % 5) / 5.0, "x3": 10.0 + i % 3, "color": COLORS[i % 3], **overrides}


# The test preprocessing with one more required field: a candidate trained on it answers 422 to callers
# that send only the baseline's fields.
PREPROCESSING_WITH_X4 = Preprocessing.from_manifest({
    **PREPROCESSING.to_dict(),
    "features": [*PREPROCESSING.to_dict()["features"], {"name": "x4", "kind": "numeric"}],
    "normalization": {**PREPROCESSING.to_dict()["normalization"], "x4": {"mean": 0.0, "std": 1.0}},
})


def tiny_model(seed: int, failure_rate: float | None = None,
               preprocessing: Preprocessing = PREPROCESSING) -> torch.nn.Module:
    """A 2-class MLP over the test fields; wrapped in FaultyModel when ``failure_rate`` is given."""
    from models.faulty import FaultyModel
    from models.tabular import TabularMLP, TabularMLPConfig

    torch.manual_seed(seed)
    module = TabularMLP(TabularMLPConfig(preprocessing.num_inputs, preprocessing.num_outputs, hidden=(8,)))
    return FaultyModel(module, failure_rate) if failure_rate is not None else module


def quality_tags(val_accuracy: float = 0.9, dataset_version: str = "v1") -> dict[str, str]:
    """Lineage and validation figures as the trainer tags a registered version (what the quality gate reads)."""
    return {"dataset": "serve-test", "dataset_version": dataset_version, "val_accuracy": f"{val_accuracy:.6g}"}


def register_version(settings: Settings, name: str, module: torch.nn.Module,
                     preprocessing: Preprocessing = PREPROCESSING, tags: dict[str, str] | None = None) -> str:
    """Log ``module`` with the test preprocessing and register it as the next version of ``name``, tagged with
    ``tags`` (default: the same validation figures for every version, so the quality gate lets it through)."""
    import mlflow

    from models.packaging import log_model

    registry = Registry(settings)
    example = {**instance(0), **{f.name: 0.5 for f in preprocessing.features if f.name == "x4"}}
    with mlflow.start_run(experiment_id=registry.ensure_experiment()):
        log_model(module, preprocessing, input_example=[example], registered_model_name=name)
    version = registry.versions(name)[-1].version
    for key, value in (quality_tags() if tags is None else tags).items():
        registry.set_version_tag(name, version, key, value)
    return version


def register_test_model(settings: Settings, name: str | None = None,
                        candidate_failure_rate: float | None = None, champion: torch.nn.Module | None = None) -> str:
    """Register v1 (alias ``champion``: ``champion`` when given) and v2 (alias ``challenger``; faulty when a rate is
    given); returns the name."""
    name = name or f"serve-{uuid.uuid4().hex[:6]}"
    registry = Registry(settings)
    v1 = register_version(settings, name, tiny_model(0) if champion is None else champion)
    v2 = register_version(settings, name, tiny_model(1, candidate_failure_rate))
    registry.set_alias(name, "champion", v1)
    registry.set_alias(name, "challenger", v2)
    return name


@dataclass
class ServeApp:
    """A deployed app: where it answers and how to call it."""

    name: str
    model: str
    url: str                      # base URL including the route prefix
    versions: dict[str, str]
    client: httpx.Client = field(repr=False)

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.model}:predict"

    def predict(self, instances: list[dict[str, Any]], headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(self.predict_url, json={"instances": instances}, headers=headers)

    def admin(self, method: str, path: str, json: Any = None, token: str | None = ADMIN_TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.request(method, f"{self.url}{path}", json=json, headers=headers)


def deploy_app(base_url: str, settings: Settings, model: str, app_name: str | None = None,
               **config: Any) -> ServeApp:
    """Deploy ``deployments.app`` for ``model`` (baseline @champion, candidate @challenger unless overridden).

    ``config`` overrides :class:`ServeAppConfig` fields (e.g. ``controller=False, traffic={...}``).
    """
    from ray import serve

    from deployments.app import build, controller_available
    from deployments.serve_config import parse_config

    app_name = app_name or f"app-{uuid.uuid4().hex[:6]}"
    args = {"model_name": model, "baseline": f"models:/{model}@champion", "candidate": f"models:/{model}@challenger",
            "tracking_uri": str(settings.mlflow_tracking_uri), "state_dir": str(settings.state_dir / app_name),
            "controller": controller_available(), "num_cpus": 0.1, "router_num_cpus": 0.1, **config}
    cfg = parse_config(args)
    serve.run(build(cfg, admin_token=ADMIN_TOKEN), name=app_name, route_prefix=f"/{app_name}")
    registry = Registry(settings)
    versions = {v: registry.resolve(cfg.ref(v)).version for v in cfg.variants}
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64))
    return ServeApp(name=app_name, model=model, url=f"{base_url}/{app_name}", versions=versions, client=client)


@contextlib.contextmanager
def running_app(base_url: str, settings: Settings, model: str, app_name: str | None = None,
                **config: Any) -> Iterator[ServeApp]:
    """:func:`deploy_app` for a ``with`` block (a module fixture's life): client closed, app deleted after it."""
    from ray import serve

    app = deploy_app(base_url, settings, model, app_name, **config)
    try:
        yield app
    finally:
        app.client.close()
        serve.delete(app.name)


def wait_for_traffic(app: ServeApp, epoch: int, timeout_s: float = 30.0) -> None:
    """Until the router serves the split of ``epoch`` (it polls the controller every TRAFFIC_POLL_S)."""
    from cluster.processes import wait_until

    def seen() -> bool:
        response = app.admin("GET", "/admin/traffic")
        return response.status_code == 200 and response.json()["epoch"] >= epoch

    if not wait_until(seen, timeout_s=timeout_s, interval_s=0.1):
        raise TimeoutError(f"router of {app.name} did not pick up traffic epoch {epoch}")


# ---- rollouts through the admin API (the rollout and fault suites) ----------------------------------------

TERMINAL = {"succeeded", "rolled_back", "concluded"}


def spec(app: ServeApp, **overrides: Any) -> dict[str, Any]:
    """A rollout spec for ``app``: challenger over champion in 25/50/100 % steps, checked every second.

    Gates at 95 % one-sided confidence (the default is 99 %): a step needs ~50 clean candidate requests
    instead of ~100 before it may advance, which keeps the suites' rollouts short on 2 cores.
    """
    return {"model": app.model, "baseline": "champion", "candidate": "challenger", "steps": [25, 50, 100],
            "interval_s": 1, "min_requests": 15, "failed_checks_before_rollback": 2, "keep_old_warm_s": 60,
            "thresholds": {"max_error_rate": 0.05, "min_requests_per_check": 5, "confidence": 0.95}, **overrides}


def admin_ok(app: ServeApp, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """An admin call that must answer 200; its JSON body."""
    r = app.admin(method, path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate: Callable[[], Any], timeout_s: float = 90.0, every_s: float = 0.1) -> Any:
    """The first truthy value of ``predicate``; AssertionError when none comes within ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("condition not reached in time")


def phase(app: ServeApp) -> str | None:
    """The phase of the app's current rollout (None before the first)."""
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    return rollout["phase"] if rollout else None


def champion_version(app: ServeApp) -> str:
    """The version the registry's ``champion`` alias points at now (read through MLflow)."""
    from cluster.settings import load_settings

    return Registry(load_settings(mlflow_tracking_uri=os.environ["MLFLOW_TRACKING_URI"])).by_alias(
        app.model, "champion").version


# ---- the replicas' Serve log files (the audit and shadow rollout suites) --------------------------------

def session_logs() -> Path:
    """The running Ray session's log folder (``/tmp/ray/session_latest/logs`` for a default head)."""
    import ray._private.worker as worker  # no public API names the local node's log folder

    return Path(worker._global_node.get_logs_dir_path())


def serve_log_records(app: str, deployment: str) -> list[dict[str, Any]]:
    """The JSON lines in the Serve log files of ``deployment``'s replicas in ``app``."""
    records = []
    for path in (session_logs() / "serve").glob(f"replica_{app}_{deployment}_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
    return records
