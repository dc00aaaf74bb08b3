"""The generation deployment: a registered language model behind OpenAI's HTTP API on Ray Serve.

Routes (FastAPI ingress, under the app's route prefix): ``POST /v1/completions``,
``POST /v1/chat/completions``, ``GET /v1/models``, and rayline's ``GET /v1/engine/stats`` (the
decode batch: active, waiting, the largest batch seen, steps, cancelled). Each replica loads the
version its reference named when it started (pinned: an alias moving later does not change a running
replica) and runs one :class:`~deployments.llm.engine.Engine`, whose loop decodes every admitted
request together, in a child process by default (``deployments.llm.engine_process``). Every
response names the version (``x-rayline-version`` and the first stream
event's ``rayline`` object).

:class:`LLMModel` is the model, engine and ``respond`` without HTTP; :class:`LLMServer` adds the routes
(an app of its own) and ``LLMVariant`` is the model as a plain deployment, a version behind the router
(``kind: llm``: the router is its app's one HTTP ingress).

The seam for a router in front: :meth:`LLMModel.respond` is a streaming method a
``DeploymentHandle`` can call (``handle.options(stream=True).respond.remote("chat", body)``); it
yields one head ``{"status", "headers", "stream"}`` and then the body as text pieces (server-sent
events when streaming, one JSON document otherwise); a generation ends with one non-text item
``{"metrics": {"mean_logprob", "completion_tokens"}}`` for the router's rollout windows, which no HTTP
answer contains (``relay.http_response`` passes text only). The HTTP routes here are themselves written on
it, so a router that proxies through the handle answers byte for byte what this ingress does.
Cancelling the call (a client gone) cancels the sequence in the engine.
"""


import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from deployments.llm import metrics
from deployments.llm.engine import Engine, EngineFailed, EngineFull, Event, SamplingParams
from deployments.llm.engine_process import EngineProcess
from deployments.llm.generation import Generation
from deployments.llm.loader import check_device, check_dtype, download, load, resolve
from deployments.llm.openai_api import (
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    chat_prompt,
    new_id,
    parse,
)
from deployments.llm.relay import http_response, model_metrics
from deployments.serve_config import FAST_PATH_ENV, LLMDtype, replica_actor_options

logger = logging.getLogger(__name__)

DEFAULT_COMPLETION_TOKENS = 16   # OpenAI's default max_tokens for /v1/completions
VERSION_HEADER = "x-rayline-version"
LOGGING = {"log_level": "WARNING", "enable_access_log": False}   # one access line per request costs CPU on 2 cores

api = FastAPI(title="rayline LLM", description="OpenAI-compatible completions and chat on a registered model.")


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug is still a JSON body in OpenAI's shape, never a plain-text 500.

    A client that went away mid-stream reaches here too (Serve cancels the replica's receive channel and
    Starlette's disconnect listener raises): the stream's generator has already cancelled the sequence.
    """
    from ray.exceptions import TaskCancelledError

    if isinstance(exc, TaskCancelledError):
        logger.info("client went away: %s", request.url.path)
        return JSONResponse(OpenAIError(499, "client closed the request", code="client_closed").body(), 499)
    logger.exception("LLM request failed")
    return JSONResponse(OpenAIError(500, f"internal error: {type(exc).__name__}", code="internal_error",
                                    kind="server_error").body(), status_code=500)


class LLMModel:
    """One replica's model and engine, and the ``respond`` seam; no HTTP (the router's variants are these)."""

    def __init__(self, model: str, tracking_uri: str | None = None, variant: str = "default", max_active: int = 16,
                 max_waiting: int = 64, max_tokens_limit: int | None = None, retry_after_s: int = 1,
                 torch_threads: int | None = None, first_token_delay_s: float = 0.0, device: str = "cpu",
                 stream_interval: int | None = None, engine_process: bool = True, dtype: str = "auto") -> None:
        """``model``: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, resolved once here.

        ``device``: ``"cpu"`` or ``"cuda"`` (the replica's GPU: the engine makes every tensor there); checked
        first, so a replica without CUDA fails at construction with one line naming the field.
        ``stream_interval``: tokens per streamed event after the first; None (default) adapts it to the batch,
        every token while few sequences decode, up to 8 per event at 16 (see ``deployments.llm.engine``).

        ``dtype``: the weights' and KV cache's precision (``loader.DTYPES``), checked first like ``device``.

        ``engine_process``: run the decode loop in a child process (``deployments.llm.engine_process``: Serve's
        threads and the engine then do not share one GIL; measured faster at concurrency 16 on 2 cores) or, False,
        in a thread of this replica.

        ``first_token_delay_s`` is a test/fault option (like ``models.faulty`` for tabular models): every
        admitted request waits this long before it joins the engine, so the version's time to first token
        grows by it; the rollout tests canary such a slow version. 0 in production.
        """
        import torch
        from transformers import AutoTokenizer

        check_device(device)
        check_dtype(dtype)
        self.info = resolve(model, tracking_uri)
        if engine_process:
            folder = download(self.info)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.engine: Engine | EngineProcess = EngineProcess(folder, device, torch_threads, max_active, max_waiting,
                                                                retry_after_s, stream_interval, dtype)
        else:
            if torch_threads:
                torch.set_num_threads(torch_threads)
            loaded = load(self.info, device, dtype)
            self.tokenizer = loaded.tokenizer
            self.engine = Engine(loaded.model, loaded.tokenizer, max_active, max_waiting, retry_after_s,
                                 stream_interval)
            self.engine.start()
        self.max_tokens_limit = min(max_tokens_limit or self.engine.context, self.engine.context)
        self.labels = {"model": self.info.name, "version": self.info.version, "variant": variant}
        self.names = {self.info.name, f"{self.info.name}/{self.info.version}", model.removeprefix("models:/")}
        self.first_token_delay_s = first_token_delay_s
        self.headers = {VERSION_HEADER: self.info.version, "x-rayline-model": self.info.name,
                        "x-rayline-variant": variant}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()

    def check_health(self) -> None:
        """Serve's replica health check (colocated: the router's): a replica whose decode loop died is replaced."""
        if not self.engine.alive:
            raise RuntimeError(f"the LLM engine's decode loop stopped: {self.engine.failure or 'thread exited'}")

    async def ready(self) -> dict[str, Any]:
        """What the router asks every variant (readiness, the version it serves); no input fields to list."""
        return {"model": self.info.name, "version": self.info.version, "variant": self.labels["variant"],
                "kind": "llm", "fields": []}

    async def engine_stats(self) -> dict[str, Any]:
        """The decode batch now (active, waiting, cancelled, ...) with the limits, the weights' dtype and labels."""
        return {**self.engine.stats.as_dict(), "max_active": self.engine.max_active,
                "max_waiting": self.engine.max_waiting, "dtype": self.engine.dtype, **self.labels}

    # ---- the seam: one streaming method for HTTP and handles ------------------------------------------

    async def respond(self, kind: str, body: Any) -> AsyncIterator[Any]:
        """Head ``{"status", "headers", "stream"}``, then the body as text pieces; see the module docstring."""
        chat = kind == "chat"
        try:
            req = parse(ChatRequest if chat else CompletionRequest, body)
            if req.model not in self.names:
                raise OpenAIError(404, f"model {req.model!r} is not served here (this deployment serves "
                                       f"{self.info.name!r}, version {self.info.version})", "model", "model_not_found",
                                  kind="not_found_error")
            prompt_ids = self._prompt_ids(req, chat)
            params = self._params(req, len(prompt_ids), chat)
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            events: asyncio.Queue[Event] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            seq = self.engine.submit(prompt_ids, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except EngineFull as full:
            err = OpenAIError(429, str(full), None, "server_busy", kind="rate_limit_error",
                              headers={"Retry-After": str(full.retry_after_s)})
            async for part in self._error(err):
                yield part
            return
        except EngineFailed as failed:
            err = OpenAIError(503, f"{failed}; the replica is being replaced", None, "engine_failed",
                              kind="server_error", headers={"Retry-After": str(self.engine.retry_after_s)})
            async for part in self._error(err):
                yield part
            return
        except OpenAIError as err:
            async for part in self._error(err):
                yield part
            return
        metrics.ACTIVE.labels(**self.labels).set(self.engine.stats.active)
        yield {"status": 200, "headers": self.headers, "stream": req.stream}
        run = Generation(new_id("chatcmpl" if chat else "cmpl"), req.model, chat, len(prompt_ids), events)
        try:
            if req.stream:
                async for chunk in run.stream(self._rayline(), req.include_usage()):
                    yield chunk
            else:
                yield json.dumps(await run.collect(self._rayline()))
            if seq.finish_reason == "error":   # the engine died mid-generation: a failed request, not a short one
                raise EngineFailed(f"generation stopped: {self.engine.failure}")
            # after the last text piece: the mean log-prob etc. for the router's windows, never in an HTTP answer
            yield {"metrics": model_metrics(seq.tokens, seq.logprob_sum)}
        finally:
            if seq.finish_reason is None:   # the caller went away (a disconnect cancels this generator)
                self.engine.cancel(seq)
            metrics.record(self.labels, run.metrics(seq))
            metrics.ACTIVE.labels(**self.labels).set(self.engine.stats.active)

    async def _error(self, err: OpenAIError) -> AsyncIterator[Any]:
        metrics.record_error(self.labels, err.status)
        yield {"status": err.status, "headers": {**self.headers, **err.headers}, "stream": False}
        yield json.dumps(err.body())

    def _rayline(self) -> dict[str, Any]:
        return {"rayline": {"model": self.info.name, "version": self.info.version, "variant": self.labels["variant"]}}

    def _prompt_ids(self, req: Any, chat: bool) -> list[int]:
        text = chat_prompt(self.tokenizer, req.messages) if chat else req.text()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        field = "messages" if chat else "prompt"
        if not ids:
            raise OpenAIError(400, f"{field!r} is empty: at least one token is needed", field, "invalid_value")
        if len(ids) >= self.engine.context:
            raise OpenAIError(400, f"{field!r} is {len(ids)} tokens; this model's context is {self.engine.context} "
                                   f"tokens, prompt and completion together", field, "context_length_exceeded")
        return ids

    def _params(self, req: Any, prompt_tokens: int, chat: bool) -> SamplingParams:
        room = self.engine.context - prompt_tokens
        asked = req.token_limit() if chat else req.max_tokens
        param = "max_completion_tokens" if chat and req.max_completion_tokens is not None else "max_tokens"
        if asked is None:
            asked = min(room, self.max_tokens_limit if chat else DEFAULT_COMPLETION_TOKENS)
        elif asked > self.max_tokens_limit:
            raise OpenAIError(400, f"{param!r} is {asked}; at most {self.max_tokens_limit} on this server", param,
                              "invalid_value")
        elif asked > room:
            raise OpenAIError(400, f"{param!r} is {asked}, but the prompt's {prompt_tokens} tokens leave room for "
                                   f"{room} in this model's context of {self.engine.context}", param,
                              "context_length_exceeded")
        return SamplingParams(max_tokens=asked, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                              stop=req.stops())


# The router (``kind: llm``) is its app's one HTTP ingress, so its variants are plain deployments of the model.
LLMVariant = serve.deployment(name="llm-variant", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=512,
                              health_check_period_s=5)(LLMModel)


@serve.deployment(name="llm", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=512, health_check_period_s=5)
@serve.ingress(api)
class LLMServer(LLMModel):
    """The model behind its own OpenAI HTTP routes (an app of its own, no router)."""

    # ---- HTTP -----------------------------------------------------------------------------------------

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        card = {"id": self.info.name, "object": "model", "created": 0, "owned_by": "rayline",
                "version": self.info.version, "max_model_len": self.engine.context}
        return JSONResponse({"object": "list", "data": [card]}, headers=self.headers)

    @api.get("/v1/engine/stats")
    async def stats(self) -> JSONResponse:
        return JSONResponse(await self.engine_stats(), headers=self.headers)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._http("completion", request)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._http("chat", request)

    async def _http(self, kind: str, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        parts = self.respond(kind, body)
        head = await anext(parts)
        return await http_response(head, parts, head["headers"])


class LLMServeConfig(BaseModel):
    """``build_app``'s arguments (``serve deploy`` YAML / a RayService's ``serveConfigV2``).

    ``stream_interval``: unset (None), each sequence streams every token while the batch is small and up to 8
    tokens per event under load (about two streamed items per decode step for the whole batch: each item costs
    Serve ~1 ms of CPU); ``1`` streams strictly every token; ``N`` always N tokens per event after the first.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="models:/NAME@ALIAS or models:/NAME/VERSION (Hugging Face layout)")
    tracking_uri: str | None = None
    variant: str = "default"
    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    max_active: int = Field(default=16, ge=1, description="sequences decoded together per replica")
    max_waiting: int = Field(default=64, ge=0, description="queued beyond max_active before 429")
    max_tokens_limit: int | None = Field(default=None, ge=1)
    retry_after_s: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    num_gpus: float = Field(default=0, ge=0, description="GPUs per replica; > 0 runs the engine on cuda")
    stream_interval: int | None = Field(default=None, ge=1, description="tokens per streamed event after the first; "
                                        "unset: adaptive (1 while few sequences decode, up to 8 under load)")
    dtype: LLMDtype = Field(
        default="auto", description="weights' and KV cache's precision (auto: the checkpoint's; see "
                                    "docs/llm-serving.md, Precision)")
    replica_env: dict[str, str] = Field(
        default_factory=lambda: dict(FAST_PATH_ENV),
        description="env of the replicas; the default runs the routes on Serve's main event loop, as the router "
                    "app's replicas do (+2.5 % and +8 % tokens/s at concurrency 16 in two runs on 2 cores, within "
                    "their spread); {}: Serve's threads")
    engine_process: bool = Field(default=True, description="decode in a child process of the replica (no GIL "
                                 "shared with Serve's threads); false: in a thread of the replica")


def build(cfg: LLMServeConfig) -> Application:
    actor = replica_actor_options(cfg.num_cpus, cfg.num_gpus, cfg.replica_env)
    return LLMServer.options(name=f"llm-{cfg.variant}", num_replicas=cfg.num_replicas, ray_actor_options=actor,
                             logging_config=LOGGING).bind(
        cfg.model, cfg.tracking_uri, cfg.variant, cfg.max_active, cfg.max_waiting, cfg.max_tokens_limit,
        cfg.retry_after_s, cfg.torch_threads, device="cuda" if cfg.num_gpus else "cpu",
        stream_interval=cfg.stream_interval, engine_process=cfg.engine_process, dtype=cfg.dtype)


def build_app(args: dict[str, Any]) -> Application:
    """``import_path: deployments.llm.server:build_app``."""
    return build(LLMServeConfig(**args))
