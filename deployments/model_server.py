"""One registered model version as a Ray Serve deployment: validated, batched predictions.

Each request is validated on its own against the model's preprocessing (the fields of
its signature and the contract its training data was held to: ranges, allowed sets, whole
numbers; outliers clipped as in training) before it joins a batch, so one bad request never
fails its neighbours and a bad input is a 422 naming the field and the rule, never an
exception in the replica. Model failures, a non-finite output included, come back as a
result with status 500 and a logged reason (the rollout controller counts them); the
replica itself stays up.

Any other registered ``python_function`` model (scikit-learn, XGBoost, a custom ``pyfunc`` with
``code_paths``) is served too (``models.pyfunc_model``): each request held to the model's MLflow
signature on its own (422 naming the field), the batch run through one ``predict`` on a
DataFrame, outputs as JSON. A model whose pip requirements are not installed fails the replica's
start with one line naming them. rayline's own torch models keep their path unchanged.

Called by the router through a handle (``predict``), in-process inside the router's replicas
when the app is colocated (``deployments.colocated``), or over HTTP directly when deployed
as its own app (``__call__``; the benchmark's "direct" path).

A reference that does not resolve yet (a fresh install: no ``champion`` alias, no registered
model) does not fail the deployment: the replica starts healthy with no model, answers predict
with a JSON 503 + ``Retry-After`` naming what is missing and what to run, and re-resolves the
reference every ``resolve_interval_s`` in a background thread; once it resolves, that version is
loaded and pinned like one resolved at start. (KubeRay does not resubmit a Serve config whose build
failed, so failing here would leave a fresh install unready until someone restarts the head.)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.payload import PayloadError, error_body, parse_instances
from models.preprocessing import Feature, InputError
from models.pyfunc_model import NonFiniteOutput

logger = logging.getLogger(__name__)

CONFIDENCE_METRIC = "confidence"   # mean top-class probability, reported per request (classification)
RESOLVE_INTERVAL_S = 15.0          # how often a replica whose reference does not resolve yet asks again


def ref_model(ref: str) -> str:
    """The registered model a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` reference names."""
    return ref.removeprefix("models:/").split("/")[0].split("@")[0]


def waiting_message(ref: str, reason: str) -> str:
    """What a replica waiting for ``ref`` tells clients and ``rayline serve status``: what is missing, what to run."""
    body = ref.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        todo = (f"register a version of {name} (e.g. run the train job), then "
                f"`rayline models alias {name} {alias} VERSION`")
        what = f"alias {alias!r} of model {name!r}"
    else:
        name, _, version = body.rpartition("/")
        todo = f"register version {version} of {name} (e.g. run the train job)"
        what = f"version {version} of model {name!r}"
    return f"waiting for {what} ({reason}): {todo}; serving starts by itself once it resolves"


@serve.deployment(name="model", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  health_check_period_s=5)
class ModelServer:
    def __init__(self, model_uri: str, variant: str, version: str | None, tracking_uri: str | None = None,
                 batch_max_size: int = 32, batch_wait_timeout_s: float = 0.002,
                 max_body_bytes: int = 1_000_000, max_instances: int = 1024,
                 unresolved: str | None = None, resolve_interval_s: float = RESOLVE_INTERVAL_S) -> None:
        """``version`` None: ``model_uri`` is a reference that did not resolve (``unresolved`` says why)."""
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        self.loaded: Any = None
        self.preprocessing: Any = None
        self.pyfunc: Any = None    # models.pyfunc_model.PyfuncModel when the version is not a rayline model
        self.model_uri = model_uri
        self.model_name = ref_model(model_uri)
        self.variant = variant
        self.version = version
        self.tracking_uri = tracking_uri
        self.resolve_interval_s = resolve_interval_s
        self.max_body_bytes = max_body_bytes
        self.max_instances = max_instances
        self._forward.set_max_batch_size(batch_max_size)
        self._forward.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._forward_frames.set_max_batch_size(batch_max_size)
        self._forward_frames.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.waiting: str | None = None
        if version is not None:
            self._load(model_uri, version)
        else:
            self.waiting = waiting_message(model_uri, unresolved or "not resolved")
            logger.warning("model %s (%s): %s", self.model_name, variant, self.waiting)
            threading.Thread(target=self._await_model, name=f"resolve-{variant}", daemon=True).start()

    def _load(self, uri: str, version: str) -> None:
        from models.packaging import LoadedModel, load_served

        loaded = load_served(uri)
        if isinstance(loaded, LoadedModel):
            self.preprocessing, self.pyfunc = loaded.preprocessing, None
        else:
            self.preprocessing, self.pyfunc = None, loaded
        self.loaded, self.model_uri, self.version = loaded, uri, version
        self.waiting = None   # last: predict serves once this is None

    def _await_model(self) -> None:
        """Until the reference resolves: ask the registry again every ``resolve_interval_s``, then load and pin."""
        from cluster.registry import Registry
        from cluster.settings import load_settings

        ref = self.model_uri
        while self.waiting is not None:
            time.sleep(self.resolve_interval_s)
            try:
                info = Registry(load_settings(mlflow_tracking_uri=self.tracking_uri)).resolve(ref)
                self._load(info.uri, info.version)
                logger.warning("model %s (%s): %s resolved to version %s; serving it",
                               self.model_name, self.variant, ref, info.version)
            except Exception as exc:  # still missing, or the registry is away: keep waiting
                self.waiting = waiting_message(ref, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def check_health(self) -> None:
        """Serve's replica health check: a replica that lost its model is restarted (one still waiting is fine)."""
        if self.loaded is None and self.waiting is None:
            raise RuntimeError("model not loaded")

    def ready(self) -> dict[str, Any]:
        if self.waiting is not None:
            return {"variant": self.variant, "version": None, "uri": self.model_uri, "waiting": self.waiting,
                    "task": None, "classes": [], "fields": []}
        if self.pyfunc is not None:
            return {"variant": self.variant, "version": self.version, "uri": self.model_uri, "task": None,
                    "classes": [], "fields": self.pyfunc.fields(), "flavor": self.pyfunc.flavor}
        return {"variant": self.variant, "version": self.version, "uri": self.model_uri,
                "task": self.preprocessing.task, "classes": list(self.preprocessing.classes),
                "fields": [field_rules(f) for f in self.preprocessing.features]}

    async def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """Instances → ``{status, predictions, version, metrics}``; never raises for bad input or model errors."""
        if self.waiting is not None:
            return {"status": 503, "version": None, "retry_after_s": self.resolve_interval_s,
                    **error_body(503, None, self.waiting, rule="model_pending")}
        if self.pyfunc is not None:
            return await self._predict_pyfunc(instances)
        try:
            matrix = self.preprocessing.records_to_matrix(instances)
        except InputError as exc:
            return self._rejected(exc)
        try:
            outputs = await self._forward(matrix)
            if isinstance(outputs, Exception):
                return self._failed(f"model failed: {type(outputs).__name__}: {outputs}", "model_error")
            bad = int((~np.isfinite(outputs)).any(axis=tuple(range(1, outputs.ndim))).sum())
            if bad:
                return self._failed(f"model output is not finite (nan/inf) for {bad} of {len(outputs)} instances",
                                    "finite_output")
            return {"status": 200, "version": self.version,
                    "predictions": self.preprocessing.decode_outputs(outputs),
                    "metrics": self._metrics(outputs)}
        except Exception as exc:  # anything else is still this request's 500, never the replica's
            return self._failed(f"prediction failed: {type(exc).__name__}: {exc}", "model_error")

    async def _predict_pyfunc(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """:meth:`predict` for a ``python_function`` model: this request held to the signature, then batched."""
        try:
            outputs = await self._forward_frames(self.pyfunc.frame(instances))   # frame() checks before batching
        except InputError as exc:
            return self._rejected(exc)
        except Exception as exc:  # still this request's 500, never the replica's
            outputs = exc
        if isinstance(outputs, Exception):
            rule = "finite_output" if isinstance(outputs, NonFiniteOutput) else "model_error"
            return self._failed(f"model failed: {type(outputs).__name__}: {outputs}", rule)
        return {"status": 200, "version": self.version, "predictions": outputs, "metrics": {}}

    def _rejected(self, exc: InputError) -> dict[str, Any]:
        return {"status": 422, "version": self.version, **error_body(422, exc.field, exc.problem, rule=exc.rule)}

    def _failed(self, reason: str, rule: str) -> dict[str, Any]:
        logger.error("model %s v%s: %s", self.model_name, self.version, reason)
        return {"status": 500, "version": self.version, **error_body(500, None, reason, rule=rule)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _forward(self, matrices: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """One forward pass for every request in the batch; a model error is each request's result."""
        import torch

        sizes = [len(m) for m in matrices]
        try:
            with torch.no_grad():
                out = self.loaded.module(torch.from_numpy(np.concatenate(matrices))).numpy()
        except Exception as exc:  # a model error is a 500 result, not a dead replica
            logger.warning("model %s v%s failed on a batch of %d: %s", self.model_name, self.version, len(sizes), exc)
            return [exc] * len(sizes)
        return list(np.split(out, np.cumsum(sizes)[:-1]))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _forward_frames(self, frames: list[Any]) -> list[list[Any] | Exception]:
        """One ``predict`` on the DataFrame of every request in the batch (``python_function`` models)."""
        return self.pyfunc.predict(frames)

    def _metrics(self, outputs: np.ndarray) -> dict[str, float]:
        if self.preprocessing.task != "classification" or outputs.ndim != 2 or not len(outputs):
            return {}
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        return {CONFIDENCE_METRIC: float(probs.max(axis=1).mean())}

    async def __call__(self, request: Request) -> JSONResponse:
        """Direct HTTP: ``POST …:predict`` with ``{"instances": [...]}``; ``GET`` describes the model."""
        if request.method == "GET":
            return JSONResponse(self.ready())
        try:
            instances = parse_instances(await request.body(), self.max_body_bytes, self.max_instances)
        except PayloadError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        result = await self.predict(instances)
        status = result.pop("status")
        retry = result.pop("retry_after_s", None)
        headers = {"Retry-After": retry_after(retry)} if retry is not None else None
        return JSONResponse({**result, "model": self.model_name, "variant": self.variant}, status_code=status,
                            headers=headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def field_rules(feature: Feature) -> dict[str, Any]:
    """A request field as the model describes it: kind, vocabulary and the contract's rules (for clients, OpenAPI)."""
    return {"name": feature.name, "kind": feature.kind, "vocabulary": list(feature.vocabulary),
            "minimum": feature.minimum, "maximum": feature.maximum, "allowed": list(feature.allowed),
            "integer": feature.integer, "clip": list(feature.clip) if feature.clip else None}
