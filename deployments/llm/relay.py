"""The router's side of language-model traffic: what one routed generation needs besides the router itself.

The router (``deployments.router``, ``kind: llm``) calls a variant's ``LLMServer.respond`` through a
streaming handle (colocated: in-process, ``deployments.colocated.LocalStream``) and relays its pieces; a
:class:`Relay` keeps that request's status and its time to first token, which the rollout windows take
as the request's latency (the controller's latency gates then compare TTFT between versions), and the
model metrics the variant reports after its last piece (``mean_logprob``, ``completion_tokens``), the
request's model metrics there. Errors the router itself answers use OpenAI's error shape, so an OpenAI
client reads them like the model server's own.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.llm.metrics import mean_logprob
from deployments.llm.openai_api import OpenAIError

STICKY_USER_FIELD = "user"   # OpenAI's end-user id: the sticky key unless the sticky header is sent
MEAN_LOGPROB = "mean_logprob"   # model metric: mean log-probability per generated token (<= 0, higher is better)
COMPLETION_TOKENS = "completion_tokens"


class CallFailed(Exception):
    """No head came from the variant (died, overloaded, unavailable, too slow): ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def model_metrics(completion_tokens: int, logprob_sum: float) -> dict[str, float]:
    """What a finished generation reports to the rollout windows (``respond``'s closing item).

    ``mean_logprob``: the mean natural-log probability per generated token under the model at temperature 1
    (``<= 0``; higher means the model found its own output likelier), absent when nothing was generated.
    The Prometheus histogram ``rayline_llm_mean_neg_logprob`` records minus the same number.
    """
    out = {COMPLETION_TOKENS: float(completion_tokens)}
    if (mean := mean_logprob(completion_tokens, logprob_sum)) is not None:
        out[MEAN_LOGPROB] = mean
    return out


class Relay:
    """One routed generation: its variant, status, when its first body piece (the first token) came, and the
    model metrics the variant reported after its last piece."""

    def __init__(self, variant: str, started: float) -> None:
        self.variant, self.started = variant, started
        self.status = 200
        self.first_at: float | None = None
        self.model_metrics: dict[str, float] | None = None

    def take(self, piece: Any) -> str | None:
        """A text piece to pass on (the first one stamps the first token), or None for the closing
        ``{"metrics": ...}`` item, which is kept (finite numbers only) for the windows instead."""
        if isinstance(piece, str):
            self.seen()
            return piece
        if isinstance(piece, dict) and isinstance(piece.get("metrics"), dict):
            self.model_metrics = {str(name): float(value) for name, value in piece["metrics"].items()
                                  if isinstance(value, int | float) and math.isfinite(value)}
        return None

    def seen(self) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()

    def latency_s(self) -> float:
        """Time to the first token (the whole answer when not streamed), or to now when none came."""
        return (self.first_at or time.perf_counter()) - self.started


def openai_error(status: int, message: str, param: str | None, headers: dict[str, str],
                 kind: str = "invalid_request_error") -> JSONResponse:
    body = OpenAIError(status, message, param, kind=kind).body()
    return JSONResponse(body, status_code=status, headers=headers)


async def http_response(head: dict[str, Any], pieces: AsyncIterator[str], headers: dict[str, str]) -> Response:
    """``respond``'s head and the rest of its pieces as one HTTP answer: server-sent events passed on as they come,
    or the single JSON document. The model server's own routes and the router both answer through this."""
    status = int(head["status"])
    if head["stream"]:
        return StreamingResponse(_text(pieces), status_code=status, headers=headers, media_type="text/event-stream")
    text = "".join([piece async for piece in _text(pieces)])
    return Response(text, status_code=status, headers=headers, media_type="application/json")


async def _text(pieces: AsyncIterator[Any]) -> AsyncIterator[str]:
    """The text pieces only: ``respond``'s closing metrics item is for the router's windows, not the answer."""
    async for piece in pieces:
        if isinstance(piece, str):
            yield piece
