"""Model versions loaded inside the router's replicas and called like Serve handles (``colocate: true``).

Each request through the router otherwise crosses one more Serve hop (router replica → model
replica), which on a small machine costs several milliseconds: more than a small model's
forward pass. Colocated, every router replica loads each version as a
:class:`~deployments.model_server.ModelServer` object (validation and ``@serve.batch``
included) and calls it in-process. :class:`LocalHandle` gives that object the slice of the
``DeploymentHandle`` API the router uses (``options(method_name=…)``, ``.predict.remote(…)``,
``.ready.remote()`` → an awaitable that can be cancelled), so routing, metrics, timeouts and
shadow copies run the same router code in both topologies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


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


class LocalHandle:
    """A model version in this process, shaped like the ``DeploymentHandle`` of its own deployment."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.predict = LocalMethod(server.predict)
        self.ready = LocalMethod(server.ready)

    def options(self, method_name: str, **transport: Any) -> LocalMethod:
        """The method; transport options (``_by_reference``…) mean nothing in-process."""
        return getattr(self, method_name)

    def check_health(self) -> None:
        self.server.check_health()


def load_local(model_args: dict[str, Any]) -> LocalHandle:
    """Load one version in this process from ``deployments.app.model_args``."""
    from deployments.model_server import ModelServer

    return LocalHandle(ModelServer.func_or_class(**model_args))
