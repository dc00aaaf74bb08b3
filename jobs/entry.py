"""What every job entrypoint shares: one-line errors with exit codes, and the final result line.

A job prints exactly one ``RAYLINE_RESULT {json}`` line at the end, which
``cluster.jobs_client.parse_result`` reads back from the job's logs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.errors import RaylineError
from cluster.jobs_client import RESULT_PREFIX

if TYPE_CHECKING:
    from cluster.settings import Settings


def emit_result(summary: dict[str, Any]) -> dict[str, Any]:
    print(RESULT_PREFIX + json.dumps(summary, default=str), flush=True)
    return summary


def entrypoint(job: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Make ``main`` an edge: a RaylineError becomes one stderr line and its exit code."""

    def wrap(main: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                return main(*args, **kwargs)
            except RaylineError as exc:
                print(f"{job}: error: {exc}", file=sys.stderr, flush=True)
                sys.exit(exc.exit_code)

        return run

    return wrap


def catalog_job(job: str, config: str | None, root: str | None) -> tuple[Settings, str, str]:
    """What a job over the dataset catalog starts with: settings, logging, a trace id, the catalog root."""
    from cluster.logs import configure_logging
    from cluster.settings import load_settings
    from cluster.tracing import ensure_trace_id

    settings = load_settings(config)
    configure_logging(job, level=settings.log_level, fmt=settings.log_format)
    return settings, ensure_trace_id(), root or str(settings.datasets_root)
