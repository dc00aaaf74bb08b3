"""The arguments of the serving application (``deployments.app:build_app``), validated once.

The same dict comes from ``serve run``/``serve deploy`` YAML, the Helm chart's RayService
``serveConfigV2`` and ``rayline serve deploy``, so every field has a default that suits a
laptop and secrets are named by environment variable, never written into the config.
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.errors import ConfigError
from cluster.files import join
from deployments.contracts import BASELINE, CANDIDATE

MODEL_PREFIX = "models:/"
# a language model's weights and KV cache (kind: llm); "auto": the checkpoint's own (its config.json's dtype)
LLMDtype = Literal["auto", "float32", "bfloat16", "float16"]

# Serve runs user code and outgoing handle calls on their own event-loop threads by default; each
# request then crosses threads twice per hop, which costs milliseconds on a 2-core box. Our handlers
# never block (the model forward is tiny and batched), so both run on the replica's main loop.
FAST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def replica_actor_options(num_cpus: float, num_gpus: float, env: dict[str, str]) -> dict[str, Any]:
    """A replica's ``ray_actor_options``: its CPUs, GPUs when any, and ``env`` as its runtime env when not empty."""
    options: dict[str, Any] = {"num_cpus": num_cpus, **({"num_gpus": num_gpus} if num_gpus else {})}
    if env:
        options["runtime_env"] = {"env_vars": dict(env)}
    return options


class LLMOptions(BaseModel):
    """How each variant's :class:`~deployments.llm.server.LLMServer` runs (``kind: llm``)."""

    model_config = ConfigDict(extra="forbid")

    max_active: int = Field(16, ge=1, description="sequences one replica decodes together")
    max_waiting: int = Field(64, ge=0, description="queued beyond max_active before 429")
    max_tokens_limit: int | None = Field(None, ge=1, description="the largest max_tokens accepted (default: context)")
    torch_threads: int | None = Field(1, ge=1, description="torch threads per model replica")
    stream_interval: int | None = Field(None, ge=1, description="tokens per streamed event after the first (unset: "
                                        "adaptive, every token while few sequences decode, up to 8 under load; "
                                        "1: every token; more: fewer, larger events, more tokens/s under load)")
    dtype: LLMDtype = Field(
        "auto", description="precision of the weights and the KV cache (see docs/llm-serving.md, Precision): auto "
                            "keeps the checkpoint's (float32 for rayline's GPTs); bfloat16 is faster on batches where "
                            "the device has native bfloat16 (AVX512-BF16/AMX CPUs, GPUs), slower alone on CPUs")
    engine_process: bool = Field(True, description="run each replica's decode loop in a child process (Serve's "
                                                   "threads and the engine then do not share one GIL); false: in "
                                                   "a thread of the replica")
    num_gpus: float = Field(
        0, ge=0, le=1, description="GPUs per variant replica (a fraction, or 1: one engine runs on one device); "
                                   "> 0 runs the engine on CUDA. Colocated, the router replicas ask for it instead "
                                   "and every variant they load shares that GPU")
    first_token_delay_s: dict[str, float] = Field(
        default_factory=dict, description="TEST/FAULT option: variant → seconds its server waits before each "
                                          "request's first token (a deliberately slow version for rollback tests)")


class ServeAppConfig(BaseModel):
    """What to serve (model, baseline and candidate refs) and how (replicas, limits, timeouts)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, description="registered model name; also the predict path segment")
    kind: Literal["tabular", "llm"] = Field(
        "tabular", description="tabular: the predict API; llm: a language model (Hugging Face layout) behind "
                               "OpenAI's /v1/completions, /v1/chat/completions and /v1/models, streamed")
    llm: LLMOptions = Field(default_factory=LLMOptions, description="generation settings when kind is llm")
    baseline: str = Field(description="models:/NAME/VERSION or models:/NAME@ALIAS (e.g. models:/iris@champion)")
    candidate: str | None = Field(None, description="second version to canary / A-B test against the baseline")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: settings / env)")
    admin_token_env: str = Field("RAYLINE_ADMIN_TOKEN", description="env var holding the admin bearer token")
    predict_token_env: str = Field("RAYLINE_SERVE_PREDICT_TOKEN",
                                   description="env var holding a bearer token for predict (unset: predict open)")
    state_dir: str = Field(".rayline", description="rollouts persist under <state_dir>/rollouts/<model> "
                                                       "unless rollouts_root is set")
    rollouts_root: str | None = Field(None, description="where rollouts persist instead (<root>/<model>): a path, "
                                                        "file:// or s3:// URL (default <state_dir>/rollouts)")
    controller: bool = Field(True, description="deploy the rollout controller (else a static traffic split)")
    traffic: dict[str, float] | None = Field(None, description="static split when there is no controller")
    shadow: str | None = Field(None, description="static shadow variant when there is no controller")
    sticky_field: str | None = Field("user_id", description="instance field hashed for sticky assignment")

    colocate: bool = Field(
        False, description="load every version inside the router's replicas: no extra Serve hop per request "
                           "(about a direct call's latency), but the versions share each replica's CPU, memory "
                           "and fate; for small models. Replicas, CPUs (and llm.num_gpus) and limits are then the "
                           "model's settings. A language model: each router replica runs every variant's engine")
    model_calls: Literal["grpc", "actor"] = Field(
        "grpc", description="transport of router → model calls (separate replica sets): 'grpc' sends them by value "
                            "over gRPC between replicas (Serve's fast path; 5-10 % more throughput on 2 cores), "
                            "'actor' as Ray actor calls")
    replicas: int = Field(1, ge=1, description="replicas per model version (colocated: router replicas)")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per model replica (fractional on small machines)")
    router_replicas: int = Field(1, ge=1)
    router_num_cpus: float = Field(0.25, gt=0)
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="spread the model and router replicas over nodes: at most this many of one "
                                "deployment per node (1: losing a node costs each deployment one replica)")
    controller_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources the rollout controller's replica needs (keeps it "
                                          "on the nodes that have them, e.g. {rayline_worker: 0.01})")
    max_ongoing_requests: int = Field(32, ge=1, description="per replica, before requests queue")
    max_queued_requests: int = Field(256, ge=1, description="per caller, before 503 + Retry-After")
    retry_after_s: float = Field(1.0, ge=0)
    request_timeout_s: float = Field(10.0, gt=0, description="router → model call deadline (504 past it)")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger bodies get 413")
    max_instances: int = Field(1024, ge=1, description="instances per request")
    batch_max_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    access_log: bool = Field(False, description="Serve's per-request access log (costly on small machines)")
    serve_log_level: str = Field("WARNING", description="level of Serve's own replica logs")
    replica_env: dict[str, str] = Field(
        default_factory=lambda: dict(FAST_PATH_ENV),
        description="env of router and model replicas; the default runs handler and handle calls on one event loop")
    max_shadow_in_flight: int = Field(64, ge=0, description="shadow copies beyond this are dropped, never queued")
    resolve_interval_s: float = Field(
        15.0, gt=0, description="a model reference that does not resolve yet (no champion on a fresh install) is "
                                "asked for again this often; the replica serves 503 + Retry-After until then")

    feedback_root: str | None = Field(
        None, description="where feedback (delayed labels, rewards) is stored, <root>/<model>: a path, file:// or "
                          "s3:// URL (default: 'feedback' beside rollouts_root when set, else <state_dir>/feedback)")
    feedback_ttl_days: float = Field(30.0, gt=0, description="how long a response's request id accepts feedback")

    @field_validator("baseline", "candidate")
    @classmethod
    def _model_uri(cls, ref: str | None) -> str | None:
        if ref is not None and not ref.startswith(MODEL_PREFIX):
            raise ValueError(f"must be a models:/NAME/VERSION or models:/NAME@ALIAS URI, got {ref!r}")
        return ref

    @model_validator(mode="after")
    def _static_traffic(self) -> ServeAppConfig:
        variants = self.variants
        if self.traffic is not None:
            unknown = set(self.traffic) - set(variants)
            if unknown or any(w < 0 for w in self.traffic.values()) or sum(self.traffic.values()) <= 0:
                raise ValueError(f"traffic must give non-negative weights to {variants}, got {self.traffic}")
        if self.shadow is not None and self.shadow not in variants:
            raise ValueError(f"shadow must be one of {variants}, got {self.shadow!r}")
        if self.kind != "llm" and self.llm.num_gpus:
            raise ValueError("llm.num_gpus is for kind: llm (a tabular model's replicas run on CPUs)")
        unknown = set(self.llm.first_token_delay_s) - set(variants)
        if unknown:
            raise ValueError(f"llm.first_token_delay_s names variants not served: {sorted(unknown)}")
        return self

    @property
    def variants(self) -> list[str]:
        return [BASELINE, CANDIDATE] if self.candidate else [BASELINE]

    @property
    def logging_config(self) -> dict[str, Any]:
        return {"log_level": self.serve_log_level, "enable_access_log": self.access_log}

    @property
    def model_call_options(self) -> dict[str, Any]:
        """``DeploymentHandle.options`` for the router's model calls (gRPC: by value, not by reference)."""
        return {"_by_reference": False} if self.model_calls == "grpc" else {}

    @property
    def placement(self) -> dict[str, Any]:
        """Serve deployment options that spread replicas over nodes ({} when unset: Serve's defaults)."""
        return {"max_replicas_per_node": self.max_replicas_per_node} if self.max_replicas_per_node else {}

    def actor_options(self, num_cpus: float, num_gpus: float = 0) -> dict[str, Any]:
        return replica_actor_options(num_cpus, num_gpus, self.replica_env)

    @property
    def feedback_store_root(self) -> str:
        """Where feedback persists: explicit, else beside the rollouts (one storage root), else the state dir."""
        if self.feedback_root:
            return self.feedback_root
        if self.rollouts_root:
            return join(posixpath.dirname(self.rollouts_root.rstrip("/")) or ".", "feedback")
        return join(self.state_dir, "feedback")

    def ref(self, variant: str) -> str:
        return self.baseline if variant == BASELINE else str(self.candidate)


def parse_config(args: dict[str, Any]) -> ServeAppConfig:
    """Validate ``args``; a bad field is one ConfigError line naming it."""
    try:
        return ServeAppConfig.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise ConfigError(f"invalid serve config '{where}': {first['msg']}") from None
