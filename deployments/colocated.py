"""Model versions loaded inside the router's replicas and called like Serve handles (``colocate: true``).

Each request through the router otherwise crosses one more Serve hop (router replica → model
replica), which on a small machine costs several milliseconds: more than a small model's
forward pass. Colocated, every router replica loads each version in-process (a tabular
:class:`~deployments.model_server.ModelServer` with its validation and ``@serve.batch``, or a
language model's :class:`~deployments.llm.server.LLMModel` with its own engine thread) and calls it
there. :class:`LocalHandle` gives that object the slice of the ``DeploymentHandle`` API the router
uses (``options(method_name=…, stream=…)``, ``.predict.remote(…)``, ``.ready.remote()`` → an
awaitable that can be cancelled; a streaming method → an async iterator that can be cancelled), so
routing, metrics, timeouts, shadow copies and cancellation run the same router code in both topologies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal

_closing: set[asyncio.Task] = set()   # streams being closed in the background (the loop keeps weak references)


async def resolved(value: Any) -> Any:
    """``value`` as an awaitable, for call paths that expect one."""
    return value


class LocalMethod:
    """``handle.method``: ``remote(...)`` starts the call as a task (awaitable, ``cancel()``-able)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        result = self._fn(*args, **kwargs)
        return asyncio.ensure_future(result if inspect.isawaitable(result) else resolved(result))


class LocalStream:
    """A streaming call in process, shaped like Serve's ``DeploymentResponseGenerator``: async iteration over the
    method's async generator and ``cancel()``. A cancelled caller awaiting the next piece cancels the generator
    itself (the exception runs through it); ``cancel()`` closes one left suspended between pieces."""

    def __init__(self, pieces: AsyncGenerator[Any, None]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> LocalStream:
        return self

    def __anext__(self) -> Any:
        return self._pieces.__anext__()

    def cancel(self) -> None:
        if self._pieces.ag_frame is None or self._pieces.ag_running:   # finished, or its own caller cancels it
            return
        task = asyncio.get_running_loop().create_task(self._pieces.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


class LocalStreamMethod:
    """``handle.options(stream=True).method``: ``remote(...)`` → a :class:`LocalStream`."""

    def __init__(self, fn: Callable[..., AsyncGenerator[Any, None]]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> LocalStream:
        return LocalStream(self._fn(*args, **kwargs))


class LocalHandle:
    """A model version in this process, shaped like the ``DeploymentHandle`` of its own deployment."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def __getattr__(self, name: str) -> LocalMethod:
        """``handle.ready``, ``handle.engine_stats``…: the server's method of that name."""
        if name.startswith("_") or name == "server":
            raise AttributeError(name)
        return LocalMethod(getattr(self.server, name))

    def options(self, method_name: str, stream: bool = False, **transport: Any) -> LocalMethod | LocalStreamMethod:
        """The method; transport options (``_by_reference``…) mean nothing in-process."""
        method = getattr(self.server, method_name)
        return LocalStreamMethod(method) if stream else LocalMethod(method)

    def check_health(self) -> None:
        check = getattr(self.server, "check_health", None)
        if check is not None:
            check()


def load_local(model_args: dict[str, Any], kind: Literal["tabular", "llm"] = "tabular") -> LocalHandle:
    """Load one version in this process from ``deployments.app.model_args`` (``llm_args`` for a language model)."""
    if kind == "llm":
        from deployments.llm.server import LLMModel

        return LocalHandle(LLMModel(**model_args))
    from deployments.model_server import ModelServer

    return LocalHandle(ModelServer.func_or_class(**model_args))
