"""The serving application: one model deployment per variant, the controller, the router in front.

``build_app`` is the import path for ``serve run`` / ``serve deploy`` YAML and the Helm
chart's RayService ``serveConfigV2`` (``import_path: deployments.app:build_app`` with the
args of :class:`~deployments.serve_config.ServeAppConfig`). Model references are resolved
against the registry here, once, so every replica of a variant serves the same pinned
version even if an alias moves while they start. A reference that does not resolve yet (a fresh
install without ``champion``) still deploys: its model server waits for it (503 + Retry-After
naming what to run) and loads it when it appears, so the first alias brings serving up without
a redeploy (KubeRay never resubmits a config whose build failed).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from pydantic import SecretStr
from ray.serve import Application

from cluster.errors import ConfigError, RegistryError
from cluster.registry import Registry
from cluster.settings import load_settings
from deployments.model_server import ModelServer, ref_model
from deployments.router import Router
from deployments.serve_config import MODEL_PREFIX, ServeAppConfig, parse_config
from deployments.static_traffic import StaticTraffic, normalise

CONTROLLER_MODULE = "deployments.controller"


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: validated args → the bound application."""
    return build(parse_config(args))


def controller_available() -> bool:
    return importlib.util.find_spec(CONTROLLER_MODULE) is not None


def model_args(cfg: ServeAppConfig, variant: str, uri: str, version: str | None, tracking_uri: str,
               unresolved: str | None = None) -> dict[str, Any]:
    """``ModelServer``'s constructor arguments for one variant (its own deployment, or inside the router).

    ``version`` None: ``uri`` is the reference that did not resolve (``unresolved`` says why); the server waits.
    """
    return {"model_uri": uri, "variant": variant, "version": version, "tracking_uri": tracking_uri,
            "batch_max_size": cfg.batch_max_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
            "max_body_bytes": cfg.max_body_bytes, "max_instances": cfg.max_instances,
            "unresolved": unresolved, "resolve_interval_s": cfg.resolve_interval_s}


def model_server(cfg: ServeAppConfig, variant: str, uri: str, version: str | None, tracking_uri: str,
                 unresolved: str | None = None) -> Application:
    """The bound model deployment of one variant (also deployable alone: the benchmark's direct path)."""
    return ModelServer.options(
        name=f"model-{variant}",
        num_replicas=cfg.replicas,
        ray_actor_options=cfg.actor_options(cfg.num_cpus),
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config={"retry_after_s": cfg.retry_after_s},
        logging_config=cfg.logging_config,
        **cfg.placement,
    ).bind(**model_args(cfg, variant, uri, version, tracking_uri, unresolved))


def llm_args(cfg: ServeAppConfig, variant: str, version: str, tracking_uri: str) -> dict[str, Any]:
    """``LLMModel``'s constructor arguments for one variant (its own deployment, or inside the router)."""
    llm = cfg.llm
    args: dict[str, Any] = {
        "model": f"{MODEL_PREFIX}{cfg.model_name}/{version}", "tracking_uri": tracking_uri, "variant": variant,
        "max_active": llm.max_active, "max_waiting": llm.max_waiting, "max_tokens_limit": llm.max_tokens_limit,
        "retry_after_s": int(cfg.retry_after_s) or 1, "torch_threads": llm.torch_threads,
        "stream_interval": llm.stream_interval, "engine_process": llm.engine_process,
        "dtype": llm.dtype,
        "first_token_delay_s": llm.first_token_delay_s.get(variant, 0.0)}
    if llm.num_gpus > 0:   # only then: a CPU deployment keeps the engine's default device
        args["device"] = "cuda"
    return args


def llm_server(cfg: ServeAppConfig, variant: str, version: str, tracking_uri: str) -> Application:
    """The bound generation deployment of one variant of a language model (``kind: llm``), pinned to ``version``."""
    from deployments.llm.server import LOGGING, LLMVariant

    return LLMVariant.options(
        name=f"llm-{variant}",
        num_replicas=cfg.replicas,
        ray_actor_options=cfg.actor_options(cfg.num_cpus, cfg.llm.num_gpus),
        logging_config=LOGGING,
        **cfg.placement,
    ).bind(**llm_args(cfg, variant, version, tracking_uri))


def build(cfg: ServeAppConfig, admin_token: str | None = None, predict_token: str | None = None) -> Application:
    """The application for ``cfg``; tokens default to the environment variables the config names."""
    settings = load_settings(mlflow_tracking_uri=cfg.tracking_uri)
    tracking_uri = str(settings.mlflow_tracking_uri)
    registry = Registry(settings)
    servers: dict[str, Application | dict[str, Any]] = {}   # colocated: the args the router loads it with
    versions: dict[str, str] = {}   # only the variants that resolved; the others wait for their reference
    for variant in cfg.variants:
        ref = cfg.ref(variant)
        if ref_model(ref) != cfg.model_name:
            raise ConfigError(f"{variant} {ref} is not a version of {cfg.model_name!r}")
        uri, version, unresolved = ref, None, None
        try:
            info = registry.resolve(ref)
            uri, version = info.uri, info.version
            versions[variant] = info.version
        except RegistryError as exc:   # no such alias/model yet, or MLflow away: the model server waits for it
            if cfg.kind == "llm":   # a language model's server loads its version at start: it must exist
                raise ConfigError(f"{variant} {ref} does not resolve: {str(exc).splitlines()[0]}") from None
            unresolved = str(exc).splitlines()[0]
        if cfg.kind == "llm":
            servers[variant] = (llm_args if cfg.colocate else llm_server)(cfg, variant, versions[variant], tracking_uri)
            continue
        servers[variant] = (model_args if cfg.colocate else model_server)(cfg, variant, uri, version,
                                                                          tracking_uri, unresolved)
    managed = cfg.controller
    if managed:
        if not controller_available():
            raise ConfigError(f"controller: true but {CONTROLLER_MODULE} is not installed; set controller: false")
        from deployments.controller import RolloutController

        # The deployed versions are part of the args: a redeploy with other versions restarts the
        # controller, which then points traffic at whichever variant serves the version in charge.
        placed = RolloutController.options(ray_actor_options={**RolloutController.ray_actor_options,
                                                             "resources": cfg.controller_resources}
                                           ) if cfg.controller_resources else RolloutController
        controller = placed.bind(state_dir=cfg.state_dir, model_name=cfg.model_name,
                                 tracking_uri=tracking_uri, versions=versions, rollouts_root=cfg.rollouts_root)
    else:
        controller = StaticTraffic.options(logging_config=cfg.logging_config).bind(
            cfg.variants, cfg.traffic, cfg.shadow)
    admin = admin_token or os.environ.get(cfg.admin_token_env) or _secret(settings.admin_token)
    predict = predict_token or os.environ.get(cfg.predict_token_env) or _secret(settings.serve_predict_token)
    options = {
        "managed": managed,
        "kind": cfg.kind,
        "initial_traffic": None if managed else {"weights": normalise(cfg.traffic or {"baseline": 1.0}, cfg.variants),
                                                 "shadow": cfg.shadow},
        "sticky_field": cfg.sticky_field,
        "request_timeout_s": cfg.request_timeout_s,
        "model_call_options": cfg.model_call_options,
        "max_body_bytes": cfg.max_body_bytes,
        "max_instances": cfg.max_instances,
        "max_shadow_in_flight": cfg.max_shadow_in_flight,
        "retry_after_s": cfg.retry_after_s,
        "log_level": settings.log_level,
        "feedback_root": cfg.feedback_store_root,
        "feedback_ttl_s": cfg.feedback_ttl_days * 86400,
    }
    return Router.options(
        **router_sizing(cfg),
        **cfg.placement,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config={"retry_after_s": cfg.retry_after_s},
        logging_config=cfg.logging_config,
    ).bind(cfg.model_name, servers, versions, controller, options,
           SecretStr(admin) if admin else None, SecretStr(predict) if predict else None)


def router_sizing(cfg: ServeAppConfig) -> dict[str, Any]:
    """The router's replicas, resources and limits. Colocated, they are the model replicas: sized and limited as
    those, GPUs included (a language model's engines limit their own admissions, 429 past max_waiting, so its
    streams keep the router's own request limit)."""
    if not cfg.colocate:
        return {"num_replicas": cfg.router_replicas, "ray_actor_options": cfg.actor_options(cfg.router_num_cpus)}
    limit = {} if cfg.kind == "llm" else {"max_ongoing_requests": cfg.max_ongoing_requests}
    return {"num_replicas": cfg.replicas, "ray_actor_options": cfg.actor_options(cfg.num_cpus, cfg.llm.num_gpus),
            **limit}


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
