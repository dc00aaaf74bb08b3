"""One admitted request's engine events turned into OpenAI bodies (whole or streamed), with its timings.

Kept apart from the deployment class: Serve pickles the ingress class by value, and helpers it
refers to must be importable by reference from a module of their own.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from deployments.llm import metrics
from deployments.llm.engine import Event
from deployments.llm.openai_api import DONE, completion_body, sse, usage, usage_chunk


class Generation:
    """One admitted request's events turned into OpenAI bodies, with its timings."""

    def __init__(self, rid: str, model: str, chat: bool, prompt_tokens: int, events: asyncio.Queue[Event]) -> None:
        self.rid, self.model, self.chat, self.prompt_tokens, self.events = rid, model, chat, prompt_tokens, events
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.tokens = 0

    async def next(self) -> Event:
        return self._seen(await self.events.get())

    def _seen(self, event: Event) -> Event:
        self.first_at = self.first_at or event.at
        self.last_at, self.tokens = event.at, event.tokens
        return event

    def _ready(self) -> list[Event]:
        """Events already queued (the engine stepped again while the last piece was being sent)."""
        ready = []
        while not self.events.empty():
            ready.append(self._seen(self.events.get_nowait()))
        return ready

    async def collect(self, extra: dict[str, Any]) -> dict[str, Any]:
        text = []
        while True:
            event = await self.next()
            text.append(event.text)
            if event.finish_reason is not None:
                return completion_body(self.rid, self.model, "".join(text), event.finish_reason,
                                       usage(self.prompt_tokens, event.tokens), extra, self.chat, stream=False)

    async def stream(self, extra: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        """SSE pieces; events that queued up while the client was slower than the engine go out as one piece
        (several ``data:`` events in one write: one trip through Serve instead of one per token). The last
        piece carries the usage chunk and ``[DONE]`` too: each piece costs Serve ~1 ms of CPU."""
        first, finished = True, False
        while not finished:
            piece = []
            for event in [await self.next(), *self._ready()]:
                piece.append(sse(completion_body(self.rid, self.model, event.text, event.finish_reason, None,
                                                 extra if first else {}, self.chat, stream=True, first=first)))
                first, finished = False, event.finish_reason is not None
                if finished:
                    break
            if finished:
                if include_usage:
                    piece.append(sse(usage_chunk(self.rid, self.model, usage(self.prompt_tokens, self.tokens),
                                                 self.chat)))
                piece.append(DONE)
            yield "".join(piece)

    def metrics(self, seq: Any) -> metrics.RequestMetrics:
        ttft = None if self.first_at is None else self.first_at - self.started
        itl = None
        if self.first_at is not None and self.last_at is not None and self.tokens > 1:
            itl = (self.last_at - self.first_at) / (self.tokens - 1)
        return metrics.RequestMetrics(self.prompt_tokens, seq.tokens, ttft, itl, seq.logprob_sum,
                                      seq.finish_reason or "cancelled")
