"""What every job entrypoint shares: one-line errors with exit codes, and the final result line.

A job prints exactly one ``RAYLINE_RESULT {json}`` line at the end, which
``cluster.jobs_client.parse_result`` reads back from the job's logs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from cluster.errors import RaylineError
from cluster.jobs_client import RESULT_PREFIX


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
