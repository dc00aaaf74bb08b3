"""The router's side of language-model traffic: what one routed generation needs besides the router itself.

The router (``deployments.router``, ``kind: llm``) calls a variant's ``LLMServer.respond`` through a
streaming handle (colocated: in-process, ``deployments.colocated.LocalStream``) and relays its pieces; a
:class:`Relay` keeps that request's status and its time to first token, which the rollout windows take
as the request's latency (the controller's latency gates then compare TTFT between versions). Errors the
router itself answers use OpenAI's error shape, so an OpenAI client reads them like the model server's
own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.llm.openai_api import OpenAIError

STICKY_USER_FIELD = "user"   # OpenAI's end-user id: the sticky key unless the sticky header is sent


class CallFailed(Exception):
    """No head came from the variant (died, overloaded, unavailable, too slow): ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Relay:
    """One routed generation: its variant, status, and when its first body piece (the first token) came."""

    def __init__(self, variant: str, started: float) -> None:
        self.variant, self.started = variant, started
        self.status = 200
        self.first_at: float | None = None

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
        return StreamingResponse(pieces, status_code=status, headers=headers, media_type="text/event-stream")
    text = "".join([piece async for piece in pieces])
    return Response(text, status_code=status, headers=headers, media_type="application/json")
