"""The serving ingress: routes each predict to a model version and answers the admin API.

Data plane: weighted split, sticky assignment, forced variant, shadow copies; every
response names the variant, version and trace id. Traffic comes from the controller
(polled every ``TRAFFIC_POLL_S``; each poll acknowledges the epoch applied, and an older
epoch is never applied). When the controller has not answered for the traffic's lease the
router fails closed: everything to the fallback variant (the baseline during a rollout),
shown in ``/readyz`` and the ``serve_router_fail_closed`` gauge. What was served goes back to
the controller in the same call (``sync``: windows in, traffic out). The admin API is a thin,
token-checked, audited pass-through to the controller.

Topologies: by default each version is its own deployment (its own replica set) and the router
calls it through a Serve handle, one extra hop (by value over gRPC unless ``model_calls: actor``).
With ``colocate: true`` every router replica loads the versions itself (``deployments.colocated``)
and calls them in-process: the same routing code, no second hop. Language models too: each router replica
then runs every variant's engine, and ``respond`` streams from an in-process async generator.
"""


import asyncio
import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from cluster import metrics
from cluster.logs import configure_logging
from cluster.tracing import make_traceparent, new_trace_id, parse_traceparent
from deployments.colocated import LocalHandle, load_local, resolved
from deployments.contracts import (
    BASELINE,
    HEADER_ACTOR,
    HEADER_FORCE,
    HEADER_REQUEST_ID,
    HEADER_STICKY,
    HEADER_TRACE,
    HEADER_VARIANT,
    HEADER_VERSION,
    TRAFFIC_POLL_S,
    Traffic,
)
from deployments.feedback import FeedbackBody, FeedbackStore, GroupCommit, SeenKeys, count, outcomes, parse_body, record
from deployments.llm.relay import STICKY_USER_FIELD, CallFailed, Relay, http_response, openai_error
from deployments.openapi import document as openapi_document
from deployments.payload import PayloadError, check_size, install_json_errors, json_error, parse_instances, parse_json
from deployments.request_ids import RequestIdError, Served, derive_key, issue, verify
from deployments.rollout.errors import RolloutError
from deployments.routing import choose, effective_traffic, newer_or_same, sticky_key
from deployments.window import WindowRecorder

logger = logging.getLogger(__name__)
audit_log = logging.getLogger("rayline.audit")

COMMANDS = ("start", "promote", "pause", "resume", "abort", "rollback", "report")  # report: read-only timeline
CONTROLLER_TIMEOUT_S = 10.0
START_TIMEOUT_S = 25.0   # a start reads both versions, their schemas and figures from MLflow (a loaded server: seconds)
REPLICA_DEATH_RETRIES = 1   # a model call whose replica died before answering is sent once more

api = FastAPI(title="rayline serve", description="Predict with canary/A-B routing; rollout admin API.",
              openapi_url=None)  # served by Router.openapi, with the model's request and response bodies
install_json_errors(api)


def _http_status(exc: BaseException) -> tuple[int, str]:
    """A controller exception → (4xx/5xx, one line): RolloutError carries its status, ValueError is 400."""
    status = getattr(exc, "status_code", None)
    cause = getattr(exc, "cause", None) or exc
    message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    if isinstance(status, int) and 400 <= status < 600:
        return status, message
    if isinstance(exc, ValueError) or isinstance(cause, ValueError):
        return 400, message
    return 502, f"controller error: {message}"


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "field": None, "message": message}}


def _bearer_ok(request: Request, token: SecretStr) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.get_secret_value().encode())


async def _awaited(response: Any) -> Any:
    return await response


async def _refuse(message: str) -> Any:
    raise RolloutError(message, status_code=409)


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (unit tests)
        return uuid.uuid4().hex[:8]


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(api)
class Router:
    def __init__(self, model_name: str, servers: dict[str, DeploymentHandle | dict[str, Any]], versions: dict[str, str],
                 controller: DeploymentHandle, options: dict[str, Any],
                 admin_token: SecretStr | None = None, predict_token: SecretStr | None = None) -> None:
        configure_logging("serve-router", level=options.get("log_level", "INFO"), fmt="json")
        self.model_name = model_name
        self.kind = options.get("kind", "tabular")
        # A handle per variant, or (colocated) the model's args: loaded here and called in-process.
        self.servers = {v: load_local(s, self.kind) if isinstance(s, dict) else s for v, s in servers.items()}
        llm = self.kind == "llm"
        transport = options.get("model_call_options", {})   # gRPC by value: each streamed piece too
        self._predict = {} if llm else {v: h.options(method_name="predict", **transport)
                                        for v, h in self.servers.items()}  # one per call path
        self._respond = {v: h.options(stream=True, method_name="respond", **transport)   # a language model's
                         for v, h in self.servers.items()} if llm else {}                 # streaming seam
        self.versions = versions
        self.waiting = set(self.servers) - set(versions)   # model servers still waiting for their reference
        self.controller = controller
        # the poll: by value over gRPC, ~1.2 ms of this process's CPU per call against ~2.0 ms by reference
        self._sync_call = controller.options(method_name="sync", _by_reference=False)
        self.options = options
        self.admin_token = admin_token
        self.predict_token = predict_token
        self.traffic = Traffic.from_dict(options["initial_traffic"]) if options.get("initial_traffic") else Traffic()
        self.recorder = WindowRecorder()
        self.router_id = _replica_id()
        self._heard_at = time.monotonic()   # send time of the last answered poll (the lease counts from here)
        self._tasks: set[asyncio.Task] = set()
        self._shadow_in_flight = 0
        self._loops_started = False
        self._shown_closed: bool | None = None   # the fail-closed gauge's value, set again only when it changes
        self._fail_closed = metrics.gauge("serve_router_fail_closed", "1 while this router has not heard from its "
                                          "rollout controller within the lease and serves only the fallback "
                                          "variant", ("router",))
        self._admin_calls = metrics.counter("serve_admin_calls_total", "Admin API calls by command and status",
                                            ("command", "code"))
        # Feedback: request ids signed with a key every replica shares (derived from the admin token, else
        # created once in the feedback store), so any replica joins any id without per-request state.
        root = options.get("feedback_root")
        self.feedback_store = FeedbackStore(root, model_name) if root else None
        self._id_key = (derive_key(admin_token.get_secret_value()) if admin_token is not None
                        else self.feedback_store.signing_key() if self.feedback_store else None)
        self._feedback_writer = GroupCommit(self.feedback_store) if self.feedback_store else None
        self._feedback_seen = SeenKeys()
        self._feedback_storing: set[tuple[str, int]] = set()

    # ---------------------------------------------------------------- background loops
    def _ensure_loops(self) -> None:
        if self._loops_started:
            return
        self._loops_started = True
        for coro in (self._sync(), self._learn_versions()):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)

    async def _sync(self) -> None:
        """Every ``TRAFFIC_POLL_S``: one controller call that reports the windows served since the last one and
        answers the traffic to serve. A separate poll and report were ~9 handle calls a second on this event loop,
        the one the requests and (colocated) the engine's token callbacks run on."""
        while True:
            windows = self.recorder.drain()
            sent = time.monotonic()   # the lease counts from the send: a late answer cannot extend it
            try:
                call = self._sync_call.remote(self.router_id, self.traffic.epoch, self.versions,
                                              [w.to_dict() for w in windows])
                self._apply(Traffic.from_dict(await asyncio.wait_for(_awaited(call), CONTROLLER_TIMEOUT_S)), sent)
            except Exception as exc:  # controller away: the split stands until its lease runs out
                if windows:   # a missed report must not stop serving
                    logger.warning("could not report %d windows to the controller: %s", len(windows), exc)
            await asyncio.sleep(TRAFFIC_POLL_S)

    def _apply(self, new: Traffic, sent: float) -> None:
        """The controller answered a poll sent at ``sent``: renew the lease, and apply ``new`` unless it is older."""
        self._heard_at = sent
        if self.options.get("managed") and not newer_or_same(self.traffic, new):
            logger.warning("ignored traffic of an older epoch", extra={"epoch": new.epoch,
                                                                       "applied_epoch": self.traffic.epoch})
            return
        if new.epoch != self.traffic.epoch or new.weights != self.traffic.weights:
            logger.info("traffic changed", extra={"epoch": new.epoch, "weights": new.weights,
                                                  "shadow": new.shadow, "rollout_id": new.rollout_id})
        self.traffic = new

    async def _learn_versions(self) -> None:
        """A waiting model server: learn its version once it resolves (its own loop: a slow server must not
        delay the controller poll, whose lease would run out)."""
        while self.waiting:
            for variant in list(self.waiting):
                with contextlib.suppress(Exception):
                    info = await asyncio.wait_for(_awaited(self.servers[variant].ready.remote()), CONTROLLER_TIMEOUT_S)
                    if info.get("version"):
                        self.versions[variant] = str(info["version"])
                        self.waiting.discard(variant)
            await asyncio.sleep(TRAFFIC_POLL_S)

    def _routing(self) -> tuple[dict[str, float], str | None, bool]:
        """(weights, shadow, failed_closed) to route by now."""
        weights, shadow, closed = effective_traffic(self.traffic, time.monotonic() - self._heard_at)
        if closed != self._shown_closed:   # a gauge keeps its value: setting it per request (twice) cost ~0.3 ms
            self._fail_closed.labels(router=self.router_id).set(1.0 if closed else 0.0)   # of the loop under load
            self._shown_closed = closed
        return weights, shadow, closed

    async def check_health(self) -> None:
        self._ensure_loops()
        for server in self.servers.values():
            if isinstance(server, LocalHandle):
                server.check_health()   # a colocated replica without its models is restarted

    # ---------------------------------------------------------------- predict
    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> Response:
        self._ensure_loops()
        started = time.perf_counter()
        trace_id = parse_traceparent(request.headers.get("traceparent")) or new_trace_id()
        headers = {HEADER_TRACE: trace_id, "traceparent": make_traceparent(trace_id)}
        if (refused := self._refuse_caller(name, request, headers)) is not None:
            return refused
        if self.kind == "llm":
            return json_error(404, "model", f"{self.model_name!r} is a language model: POST /v1/completions or "
                                            "/v1/chat/completions", headers)
        try:
            check_size(request.headers.get("content-length"), self.options["max_body_bytes"])
            instances = parse_instances(await request.body(), self.options["max_body_bytes"],
                                        self.options["max_instances"])
            variant, key = self._variant(request, instances, self.options.get("sticky_field"))
        except PayloadError as exc:
            return json_error(exc.status, exc.field, exc.message, headers)
        self._served_by(variant, headers, lambda shadow: self._shadow_predict(shadow, instances))
        status, body = await self._call(variant, instances)
        self.recorder.record(variant, body.get("version") or self.versions.get(variant), status,
                             time.perf_counter() - started, body.pop("metrics", None), key=key)
        retry_s = body.pop("retry_after_s", None) or self.options.get("retry_after_s", 1)  # a waiting model: its own
        if status == 503:
            headers["Retry-After"] = str(max(1, math.ceil(retry_s)))
        if status != 200:
            return JSONResponse(body, status_code=status, headers=headers)
        answer = {"predictions": body["predictions"], "model": self.model_name, "version": body.get("version"),
                  "variant": variant}
        if self._id_key is not None:
            answer["request_id"] = headers[HEADER_REQUEST_ID] = issue(
                self._id_key, variant, str(body.get("version") or self.versions.get(variant, "")),
                body["predictions"], time.time())
        return JSONResponse(answer, headers=headers)

    def _refuse_caller(self, name: str, request: Request, headers: dict[str, str]) -> Response | None:
        """The checks every model endpoint (predict, feedback) makes first: its model's name, then the bearer token."""
        if name != self.model_name:
            return json_error(404, "model", f"this endpoint serves {self.model_name!r}, not {name!r}", headers)
        if self.predict_token is not None and not _bearer_ok(request, self.predict_token):
            return json_error(401, "authorization", "missing or wrong bearer token",
                              {**headers, "WWW-Authenticate": "Bearer"})
        return None

    # ---------------------------------------------------------------- feedback
    @api.post("/v1/models/{name}:feedback")
    async def feedback(self, name: str, request: Request) -> Response:
        """A delayed outcome for an earlier response: joined by its request id, stored, then counted."""
        self._ensure_loops()
        trace_id = parse_traceparent(request.headers.get("traceparent")) or new_trace_id()
        headers = {HEADER_TRACE: trace_id}
        if (refused := self._refuse_caller(name, request, headers)) is not None:
            return refused
        if self._id_key is None or self._feedback_writer is None:
            return json_error(404, "feedback", "feedback is not configured for this deployment (no feedback_root)",
                              headers)
        try:
            body, served, joined = await self._join_feedback(request)
        except PayloadError as exc:
            return json_error(exc.status, exc.field, exc.message, headers)
        key = (body.request_id, body.index)
        if key in self._feedback_seen or key in self._feedback_storing:
            return json_error(409, "request_id", f"feedback for this request id and index {body.index} was already "
                                                 "received; the first is kept", headers)
        self._feedback_storing.add(key)
        try:
            await self._feedback_writer.write(record(served, body, joined, self.router_id))
        except Exception as exc:   # not stored: not acknowledged, the client retries
            logger.warning("feedback not stored: %s", exc)
            return json_error(503, None, f"feedback could not be stored ({type(exc).__name__}); retry",
                              {**headers, "Retry-After": "1"})
        finally:
            self._feedback_storing.discard(key)
        self._feedback_seen.add(key)
        count(served, body.kind, joined)
        if self.versions.get(served.variant) == served.version:   # the rollout judges the versions served now
            self.recorder.record_outcomes(served.variant, served.version, joined)
        return JSONResponse({"request_id": body.request_id, "index": body.index, "variant": served.variant,
                             "version": served.version, "outcomes": joined, "stored": True}, headers=headers)

    async def _join_feedback(self, request: Request) -> tuple[FeedbackBody, Served, dict[str, float]]:
        """Body → (validated body, what served it, outcome samples); PayloadError (4xx naming the field) else."""
        check_size(request.headers.get("content-length"), self.options["max_body_bytes"])
        body = parse_body(parse_json(await request.body(), self.options["max_body_bytes"]))
        assert self._id_key is not None
        try:
            served = verify(self._id_key, body.request_id, time.time(), self.options.get("feedback_ttl_s", 30 * 86400))
        except RequestIdError as exc:
            raise PayloadError(exc.status, "request_id", str(exc)) from None
        return body, served, outcomes(served, body)

    def _variant(self, request: Request, instances: list[dict[str, Any]],
                 sticky_field: str | None) -> tuple[str, str | None]:
        """(variant, sticky key or None): the key also goes into the windows, so A/B tests count users."""
        forced = request.headers.get(HEADER_FORCE)
        if forced:
            if forced not in self.servers:
                raise PayloadError(422, HEADER_FORCE, f"unknown variant {forced!r}; serving {sorted(self.servers)}")
            return forced, None
        routed, _, _ = self._routing()
        weights = {v: w for v, w in routed.items()
                   if v in self.servers and v not in self.waiting} or {BASELINE: 1.0}   # no model yet: no traffic
        key = sticky_key(request.headers.get(HEADER_STICKY), instances, sticky_field)
        return choose(weights, key, salt=self.model_name), key

    async def _call(self, variant: str, instances: list[dict[str, Any]], retries: int = REPLICA_DEATH_RETRIES,
                    deadline: float | None = None) -> tuple[int, dict[str, Any]]:
        """One model call → (status, body); every failure becomes a status, never an exception.

        A replica that died before answering is retried once, within the same deadline: Serve sends the
        retry to a live replica, and predictions are idempotent. Answers (4xx included) and timeouts are
        never retried.
        """
        deadline = deadline or time.monotonic() + self.options["request_timeout_s"]
        try:
            result = await self._call_once(variant, instances, deadline)
        except RayActorError as exc:   # ActorDiedError, ActorUnavailableError: the replica is gone
            if retries > 0 and time.monotonic() < deadline:
                logger.warning("replica of %s died before answering (%s); retrying", variant, type(exc).__name__)
                return await self._call(variant, instances, retries - 1, deadline)
            status, message = self._failure(variant, exc)
            return status, _error(status, message)
        except Exception as exc:  # any other failure is a 5xx for this request, not a router crash
            status, message = self._failure(variant, exc)
            return status, _error(status, message)
        status = int(result.pop("status"))
        return status, result

    def _failure(self, variant: str, exc: BaseException) -> tuple[int, str]:
        """A model call's exception → (503/504, one line): what the caller gets instead of a router crash."""
        if isinstance(exc, RayActorError):
            return 503, f"{variant} replica failed: {type(exc).__name__}"
        if isinstance(exc, TimeoutError):
            return 504, f"{variant} did not answer within {self.options['request_timeout_s']} s"
        if isinstance(exc, BackPressureError):
            return 503, f"{variant} is overloaded: {exc}"
        if isinstance(exc, DeploymentUnavailableError):
            return 503, f"{variant} is unavailable: {exc}"
        logger.warning("call to %s failed: %s", variant, exc)
        return 503, f"{variant} replica failed: {type(exc).__name__}"

    async def _call_once(self, variant: str, instances: list[dict[str, Any]], deadline: float) -> dict[str, Any]:
        """One attempt at the model call, cancelled when ``deadline`` (monotonic) passes."""
        response = self._predict[variant].remote(instances)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await response  # no wrapper task per call (wait_for would create one)
        except TimeoutError:
            response.cancel()
            raise

    def _served_by(self, variant: str, headers: dict[str, str], copy: Callable[[str], Awaitable[None]]) -> None:
        """Name ``variant`` and its version in ``headers``; ``copy(shadow)`` runs when another variant shadows."""
        headers[HEADER_VARIANT] = variant
        headers[HEADER_VERSION] = self.versions.get(variant, "")
        _, shadow, _ = self._routing()
        if shadow and shadow != variant and shadow in self.servers:
            self._send_shadow(lambda: copy(shadow))

    def _send_shadow(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run a shadow copy (``run`` calls a variant and records it as shadow) in the background; its response
        is dropped. Past ``max_shadow_in_flight`` copies the copy is dropped, never queued."""
        if self._shadow_in_flight >= self.options.get("max_shadow_in_flight", 64):
            return
        self._shadow_in_flight += 1

        async def shadow() -> None:
            try:
                await run()
            finally:
                self._shadow_in_flight -= 1

        task = asyncio.get_running_loop().create_task(shadow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow_predict(self, variant: str, instances: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        status, body = await self._call(variant, instances)
        self.recorder.record(variant, body.get("version") or self.versions.get(variant), status,
                             time.perf_counter() - started, body.get("metrics"), shadow=True)

    # ---------------------------------------------------------------- language models (kind: llm)
    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._generate("completion", request)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate("chat", request)

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        """OpenAI's model list: the one model this app serves, with the version each variant serves."""
        if (refused := self._refuse_generation(request, {})) is not None:
            return refused
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "rayline",
                "versions": dict(self.versions)}
        return JSONResponse({"object": "list", "data": [card]})

    def _refuse_generation(self, request: Request, headers: dict[str, str]) -> Response | None:
        """Not a language model here (404), or the predict bearer token missing (401): OpenAI's error shape."""
        if self.kind != "llm":
            return openai_error(404, f"{self.model_name!r} is a tabular model: POST /v1/models/{self.model_name}"
                                     ":predict", "model", headers)
        if self.predict_token is not None and not _bearer_ok(request, self.predict_token):
            return openai_error(401, "missing or wrong bearer token (the client's api_key)", None,
                                {**headers, "WWW-Authenticate": "Bearer"})
        return None

    async def _generate(self, kind: str, request: Request) -> Response:
        """Route one completion/chat request to a variant and pass its ``LLMServer.respond`` stream through.

        Sticky by the OpenAI ``user`` field (or the sticky header), forced by the force header, weighted
        otherwise, a shadow copy to the shadow variant. Streams are relayed piece by piece as the model
        yields them (no buffering). The windows get the status, as latency the time to the first token, and the
        model metrics the variant reports after its last piece (mean log-prob per generated token).
        """
        self._ensure_loops()
        started = time.perf_counter()
        trace_id = parse_traceparent(request.headers.get("traceparent")) or new_trace_id()
        headers = {HEADER_TRACE: trace_id, "traceparent": make_traceparent(trace_id)}
        if (refused := self._refuse_generation(request, headers)) is not None:
            return refused
        try:
            check_size(request.headers.get("content-length"), self.options["max_body_bytes"])
            body = parse_json(await request.body(), self.options["max_body_bytes"])
            variant, key = self._variant(request, [body] if isinstance(body, dict) else [], STICKY_USER_FIELD)
        except PayloadError as exc:
            return openai_error(exc.status, exc.message, exc.field, headers)
        self._served_by(variant, headers, lambda shadow: self._shadow_generate(shadow, kind, body))
        relay = Relay(variant, started)
        try:
            head, stream = await self._open_stream(variant, kind, body)
        except CallFailed as failed:
            self.recorder.record(variant, self.versions.get(variant), failed.status, time.perf_counter() - started,
                                 key=key)
            retry = {"Retry-After": str(max(1, math.ceil(self.options.get("retry_after_s", 1))))}
            return openai_error(failed.status, failed.message, None, {**headers, **retry}, "server_error")
        relay.status = int(head["status"])
        headers = {**head["headers"], **headers}
        return await http_response(head, self._relayed(relay, stream, key), headers)

    async def _open_stream(self, variant: str, kind: str, body: Any,
                           retries: int = REPLICA_DEATH_RETRIES) -> tuple[dict[str, Any], Any]:
        """(head, the rest of the stream) of ``variant``'s ``respond``; CallFailed when no head came.

        The head comes before any generation, within ``request_timeout_s``; a replica that died before it is
        asked once more (nothing was generated yet). The body then takes as long as the generation does.
        """
        deadline = time.monotonic() + self.options["request_timeout_s"]
        while True:
            stream = self._respond[variant].remote(kind, body)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await anext(stream), stream
            except RayActorError as exc:
                stream.cancel()
                if retries > 0 and time.monotonic() < deadline:
                    retries -= 1
                    continue
                raise CallFailed(*self._failure(variant, exc)) from None
            except Exception as exc:  # any other failure is a 5xx for this request, not a router crash
                stream.cancel()
                raise CallFailed(*self._failure(variant, exc)) from None

    async def _relayed(self, relay: Relay, stream: Any, key: str | None, shadow: bool = False) -> AsyncIterator[str]:
        """The stream's pieces as they come; recorded once when it ends, is cut off, or the client leaves."""
        try:
            async for piece in stream:
                if (text := relay.take(piece)) is not None:   # the closing metrics item stays here
                    yield text
        except Exception as exc:   # the replica failed mid-stream: the client sees the stream end early
            relay.status = self._failure(relay.variant, exc)[0]
        finally:
            stream.cancel()   # a client that went away: its sequence stops (a no-op once the stream ended)
            self.recorder.record(relay.variant, self.versions.get(relay.variant), relay.status, relay.latency_s(),
                                 relay.model_metrics, shadow=shadow, key=key)

    async def _shadow_generate(self, variant: str, kind: str, body: Any) -> None:
        relay = Relay(variant, time.perf_counter())
        try:
            head, stream = await self._open_stream(variant, kind, body)
        except CallFailed as failed:
            self.recorder.record(variant, self.versions.get(variant), failed.status, relay.latency_s(), shadow=True)
            return
        relay.status = int(head["status"])
        async for _ in self._relayed(relay, stream, None, shadow=True):
            pass

    async def engine_stats(self, variant: str) -> dict[str, Any]:
        """(handle method, ``kind: llm``) ``variant``'s decode batch now: colocated, this replica's own engine."""
        return await _awaited(self.servers[variant].engine_stats.remote())

    # ---------------------------------------------------------------- model info, health
    @api.get("/v1/models/{name}")
    async def describe(self, name: str) -> Response:
        if name != self.model_name:
            return json_error(404, "model", f"this endpoint serves {self.model_name!r}, not {name!r}")
        info = await _awaited(self.servers[BASELINE].ready.remote())
        return JSONResponse({"model": self.model_name, "versions": self.versions,
                             "traffic": self.traffic.to_dict(), "fields": info["fields"]})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Response:
        versions = [await _awaited(h.ready.remote()) for h in self.servers.values()]
        return JSONResponse(openapi_document(api, self.model_name, versions, self.options["max_instances"],
                                             request.scope.get("root_path", "")))

    @api.get("/healthz")
    async def healthz(self) -> Response:
        self._ensure_loops()
        return JSONResponse({"status": "ok", "router": self.router_id})

    @api.get("/readyz")
    async def readyz(self) -> Response:
        """Ready when every model version answers; 503 naming the ones that do not."""
        self._ensure_loops()
        missing, waiting = [], {}
        for variant, handle in self.servers.items():
            try:
                info = await asyncio.wait_for(_awaited(handle.ready.remote()), 2.0)
            except Exception:  # any failure means not ready
                missing.append(variant)
                continue
            if info.get("waiting"):   # up and healthy, but no model yet: says what to run
                waiting[variant] = info["waiting"]
        weights, _, closed = self._routing()
        body = {"ready": not missing, "variants": sorted(self.servers), "not_ready": missing,
                "controller": {"heard_s_ago": round(time.monotonic() - self._heard_at, 3),
                               "lease_s": self.traffic.lease_s, "epoch": self.traffic.epoch,
                               "fail_closed": closed, "serving": weights},
                "waiting": waiting}
        return JSONResponse(body, status_code=503 if missing else 200)

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    # ---------------------------------------------------------------- admin API
    @api.get("/admin/rollout")
    async def rollout_status(self, request: Request) -> Response:
        return await self._admin(request, "status", lambda body: self.controller.status.remote())

    @api.get("/admin/rollout/history")
    async def rollout_history(self, request: Request) -> Response:
        return await self._admin(request, "history", lambda body: self.controller.history.remote())

    @api.post("/admin/rollout/{command}")
    async def rollout_command(self, command: str, request: Request) -> Response:
        if command not in COMMANDS:
            return await self._admin(request, command, None)
        return await self._admin(request, command, lambda body: self.controller.command.remote(command, body))

    @api.get("/admin/traffic")
    async def get_traffic(self, request: Request) -> Response:
        return await self._admin(request, "traffic", lambda body: resolved(self._traffic_view()))

    def _traffic_view(self) -> dict[str, Any]:
        """The split as received, plus what this router serves now (``fail_closed``: the lease ran out)."""
        weights, shadow, closed = self._routing()
        return {**self.traffic.to_dict(), "serving": weights, "serving_shadow": shadow, "fail_closed": closed}

    @api.put("/admin/traffic")
    async def set_traffic(self, request: Request) -> Response:
        """Set a static split (only without a rollout controller; with one, traffic is the controller's)."""
        if self.options.get("managed"):
            return await self._admin(request, "set_traffic", lambda body: _refuse(
                "traffic is managed by the rollout controller; use `rayline canary`"))
        return await self._admin(request, "set_traffic", lambda body: self.controller.set_traffic.remote(
            body.get("weights") or {}, body.get("shadow")))

    async def _admin(self, request: Request, command: str, call: Any) -> Response:
        """Token check, audit line, controller call, errors → JSON 4xx."""
        trace_id = parse_traceparent(request.headers.get("traceparent")) or new_trace_id()
        headers = {HEADER_TRACE: trace_id}
        body: dict[str, Any] = {}
        if request.method in ("POST", "PUT"):
            try:
                raw = await request.body()
                body = (await request.json()) if raw.strip() else {}
            except ValueError:
                body = None  # type: ignore[assignment]
        authorised = self.admin_token is not None and _bearer_ok(request, self.admin_token)
        claimed = (body or {}).get("actor") or request.headers.get(HEADER_ACTOR) or "unknown"
        actor = str(claimed) if authorised else "anonymous"
        reason = str((body or {}).get("reason") or "")
        if not authorised:
            response = json_error(401, "authorization",
                                  "missing or wrong bearer token" if self.admin_token is not None
                                  else "admin API disabled: no admin token configured",
                                  {**headers, "WWW-Authenticate": "Bearer"})
        elif body is None or not isinstance(body, dict):
            response = json_error(400, "body", "must be a JSON object", headers)
        elif call is None:
            response = json_error(404, "command", f"unknown command {command!r}; one of {list(COMMANDS)}", headers)
        else:
            try:
                timeout_s = START_TIMEOUT_S if command == "start" else CONTROLLER_TIMEOUT_S
                result = await asyncio.wait_for(_awaited(call(body)), timeout_s)
                response = JSONResponse(result, headers=headers)
            except Exception as exc:  # every controller error becomes a JSON status
                status, message = _http_status(exc)
                response = json_error(status, None, message, headers)
        self._admin_calls.labels(command=command, code=str(response.status_code)).inc()
        audit_log.info("admin %s", command, extra={
            "audit": True, "actor": actor, "command": command, "reason": reason, "trace_id": trace_id,
            "status": response.status_code, "client": request.client.host if request.client else None})
        return response
