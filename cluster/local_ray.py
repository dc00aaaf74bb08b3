"""A private Ray on this machine without a dashboard (the tests' session Ray, the benchmarks'): how to start it.

Without a dashboard there is no state API. Ray Train's PlacementGroupCleaner (one per ``fit()``)
asks that API whether the controller lives; without an address it looks the dashboard up in the
GCS, 20 tries 2 s apart (then its thread dies), and the controller's shutdown waits up to 12 s for
that thread: a ``fit()`` that ended within ~40 s returned ~12 s after its last report (measured: a
trivial 2-worker fit 26.8 s → 14.8 s; train_ddp_bench's 10-step fit 30.3/31.6 s → 19.7/19.7 s).
A closed local port makes each query fail at once; the cleaner only logs it and stops when the fit
ends. ``rayline up`` starts Ray with its dashboard (``cluster.stack``), so jobs on the stack never
needed this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cluster.serve_ingress import Ingress, ingress_env

ROOT = Path(__file__).resolve().parents[1]
NO_STATE_API = "http://127.0.0.1:1"   # port 1: nothing listens, the connection is refused at once


def worker_env(**extra: str) -> dict[str, str]:
    """``runtime_env`` env vars for a dashboard-less Ray's workers: this checkout importable, Ray Train's
    print patch off, and ``RAY_API_SERVER_ADDRESS`` on a closed port (no 12 s stall after each ``fit()``)."""
    return {"RAY_API_SERVER_ADDRESS": NO_STATE_API, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONPATH": str(ROOT),
            **extra}


def start(num_cpus: int, env: dict[str, str] | None = None, ingress: Ingress = Ingress.PROXY,
          **init_kwargs: Any) -> None:
    """``ray.init`` a new local Ray (``address="local"``: never a stale cluster) without a dashboard.

    ``env`` adds worker env vars to :func:`worker_env`'s; ``init_kwargs`` go to ``ray.init`` as they are.
    ``ingress``: Serve's HTTP ingress (``cluster.serve_ingress``), on free ports of its own; its variables are in
    this process's environment only while Ray's processes start (they inherit it), so a cluster started later
    from here picks its own.
    """
    import ray

    from cluster.processes import free_static_port

    serve_env = ingress_env(ingress, free_static_port(), free_static_port())
    saved = {name: os.environ.get(name) for name in serve_env}
    os.environ.update(serve_env)
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": worker_env(**(env or {}))}, **init_kwargs)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
