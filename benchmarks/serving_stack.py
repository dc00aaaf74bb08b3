"""The serving benchmarks' stack: a private MLflow + Ray, one registered tiny model, served two ways.

``direct``: the model deployment is the ingress. ``routed``: router ingress → the same model
deployment, 100 % baseline, no rollout controller. Same replicas, same CPU shares, so the
difference between the two paths is the router. ``hop``: a bare pass-through ingress → the
same model deployment (read the body, one handle call, answer): the cost of the extra Serve
deployment hop itself, the floor of any ingress-in-front design, so the router's own cost is
``routed − hop``. ``colocated``: the router with the model loaded inside its replicas
(``colocate: true``), the same router code without the hop. ``routed-actor``: ``routed`` with its
model calls sent as Ray actor calls (``model_calls: actor``) instead of by value over gRPC.
Used by ``serve_router_bench`` (closed-loop concurrency) and ``load_curve_bench`` (open-loop rates).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

from cluster.settings import Settings

PATHS = ("direct", "routed")
FLOOR = "hop"
COLOCATED = "colocated"
ACTOR_CALLS = "routed-actor"
REPLICA_CPUS = 0.5


@dataclass
class Endpoints:
    """Where each path answers: ``base_urls[path]`` is the app's route prefix."""

    model: str
    base_urls: dict[str, str]

    def predict_url(self, path: str) -> str:
        return f"{self.base_urls[path]}/v1/models/{self.model}:predict"


def start_stack(tmp: Path, ingress: str = "proxy") -> tuple[Settings, Popen]:
    """A private MLflow server and Ray instance with Serve's ``ingress`` (``cluster.serve_ingress``); returns
    (settings, mlflow process)."""
    from cluster import local_ray
    from cluster.processes import free_port
    from cluster.serve_ingress import Ingress
    from cluster.settings import load_settings
    from cluster.stack import start_mlflow

    settings = load_settings(state_dir=tmp, mlflow_port=free_port(), log_format="text", log_level="WARNING")
    proc = start_mlflow(settings, tmp / "mlflow.log", timeout_s=120)
    os.environ["MLFLOW_TRACKING_URI"] = str(settings.mlflow_tracking_uri)
    local_ray.start(num_cpus=6, ingress=Ingress(ingress))
    return settings, proc


def deploy(settings: Settings, port: int, batch_max_size: int) -> Endpoints:
    """Register the model, deploy ``direct`` and ``routed`` on Serve at ``port``."""
    from ray import serve

    from cluster.registry import Registry
    from deployments.app import build, model_server
    from deployments.serve_config import parse_config
    from tests.serve.helpers import register_test_model

    model = register_test_model(settings, "bench")
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    cfg = parse_config({"model_name": model, "baseline": f"models:/{model}@champion",
                        "tracking_uri": str(settings.mlflow_tracking_uri), "controller": False,
                        "num_cpus": REPLICA_CPUS, "router_num_cpus": REPLICA_CPUS, "max_ongoing_requests": 64,
                        "batch_max_size": batch_max_size})
    info = Registry(settings).resolve(cfg.baseline)
    serve.run(model_server(cfg, "baseline", info.uri, info.version, str(settings.mlflow_tracking_uri)),
              name="direct", route_prefix="/direct")
    serve.run(build(cfg, admin_token="bench"), name="routed", route_prefix="/routed")
    hop = _passthrough().options(ray_actor_options=cfg.actor_options(REPLICA_CPUS),   # as the router's
                                 logging_config=cfg.logging_config)
    serve.run(hop.bind(model_server(cfg, "baseline", info.uri, info.version, str(settings.mlflow_tracking_uri)),
                       cfg.max_body_bytes, cfg.max_instances, cfg.model_call_options),
              name=FLOOR, route_prefix=f"/{FLOOR}")
    serve.run(build(cfg.model_copy(update={"colocate": True}), admin_token="bench"), name=COLOCATED,
              route_prefix=f"/{COLOCATED}")
    serve.run(build(cfg.model_copy(update={"model_calls": "actor"}), admin_token="bench"), name=ACTOR_CALLS,
              route_prefix=f"/{ACTOR_CALLS}")
    base = f"http://127.0.0.1:{port}"
    return Endpoints(model, {path: f"{base}/{path}" for path in (*PATHS, FLOOR, COLOCATED, ACTOR_CALLS)})


def _passthrough():
    """The ``hop`` ingress: nothing but body → one ``predict`` handle call → JSON (no routing, no metrics)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from deployments.payload import PayloadError, parse_instances

    @serve.deployment(name="hop", max_ongoing_requests=64)
    class Passthrough:
        def __init__(self, model, max_body_bytes: int, max_instances: int, call_options: dict) -> None:
            self.predict = model.options(method_name="predict", **call_options)   # the router's transport
            self.limits = (max_body_bytes, max_instances)

        async def __call__(self, request: Request) -> JSONResponse:
            try:
                instances = parse_instances(await request.body(), *self.limits)
            except PayloadError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            result = await self.predict.remote(instances)
            return JSONResponse(result, status_code=result.pop("status"))

    return Passthrough


@contextmanager
def serving_stack(batch_max_size: int) -> Iterator[Endpoints]:
    """Both paths up for the ``with`` block; Serve, Ray and MLflow stopped after it, whatever happened."""
    import ray
    from ray import serve

    from cluster.processes import free_port, session_members, terminate

    settings, mlflow_proc = start_stack(Path(tempfile.mkdtemp(prefix="serve-bench-")))
    try:
        yield deploy(settings, free_port(), batch_max_size)
    finally:
        serve.shutdown()
        ray.shutdown()
        terminate(session_members(mlflow_proc.pid), grace_s=5)
