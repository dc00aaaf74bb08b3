"""Trace ids: generated, or taken from an incoming W3C ``traceparent``, and carried through.

The current trace id lives in a context variable, so log lines and outgoing calls in
the same task or request pick it up without passing it around.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import re
from collections.abc import Iterator

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("rayline_trace_id", default=None)


def new_trace_id() -> str:
    """128 random bits, as OpenTelemetry's ``RandomIdGenerator`` makes them: ids must be unique, not secret, so no
    system call per request (``secrets`` asks the kernel each time)."""
    return f"{random.getrandbits(128) or 1:032x}"


def parse_traceparent(header: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` header, else ``None``."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None or match.group(1) == _ZERO_TRACE:
        return None
    return match.group(1)


def make_traceparent(trace_id: str) -> str:
    """A ``traceparent`` header that continues ``trace_id`` with a fresh span id."""
    return f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-01"


def current_trace_id() -> str | None:
    return _current.get()


def ensure_trace_id(traceparent: str | None = None) -> str:
    """Use the incoming trace if valid, else the current one, else a new one; set it as current."""
    trace_id = parse_traceparent(traceparent) or _current.get() or new_trace_id()
    _current.set(trace_id)
    return trace_id


@contextlib.contextmanager
def trace(traceparent: str | None = None) -> Iterator[str]:
    """Run a block under a trace id (from ``traceparent`` or new), restoring the previous one after."""
    trace_id = parse_traceparent(traceparent) or new_trace_id()
    token = _current.set(trace_id)
    try:
        yield trace_id
    finally:
        _current.reset(token)
