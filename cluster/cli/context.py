"""What every ``rayline`` subcommand shares: the global options and how they become Settings."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cluster.errors import JobError
from cluster.logs import configure_logging
from cluster.settings import Settings, load_settings

console = Console()
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")   # ANSI colours and cursor moves (a live display's redraws)


@dataclass
class AppState:
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: Settings | None = None


def submit_job(settings: Settings, entrypoint: list[str], what: str = "job", follow: bool = False,
               working_dir: str | Path = ".", submission_id: str | None = None) -> str:
    """Submit ``entrypoint`` as a Ray job; with ``follow``, stream its logs and fail unless it succeeds."""
    from cluster.jobs_client import JobsClient

    client = JobsClient(settings)
    job_id = client.submit(shlex.join(entrypoint), working_dir=working_dir, submission_id=submission_id)
    console.print(f"submitted {what} [bold]{job_id}[/]")
    if follow:
        final = client.follow(job_id, line_printer(sys.stdout))
        console.print(f"job {job_id}: {final}")
        if final != "SUCCEEDED":
            raise JobError(f"{what} {job_id} ended {final}; `rayline job logs {job_id}` for details")
    return job_id


def line_printer(stream) -> Callable[[str], None]:
    """Job log lines to ``stream``: as they are on a terminal; into a file or pipe, only what a reader
    would see once a live display settles (no redraw padding, no cursor codes, no whitespace-only lines)."""
    if stream.isatty():
        return lambda line: print(line, file=stream, flush=True)

    def plain(line: str) -> None:
        if not line:
            print(file=stream, flush=True)   # a blank line the job printed on purpose
            return
        shown = [part.rstrip() for part in _CONTROL.sub("", line).split("\r")]
        text = next((part for part in reversed(shown) if part.strip()), "")
        if text:
            print(text, file=stream, flush=True)

    return plain


def settings_of(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings for this invocation: defaults → YAML → RAYLINE_* env → global and command flags."""
    root = ctx.find_root()
    state: AppState = root.obj if isinstance(root.obj, AppState) else AppState()
    settings = load_settings(state.config, **state.overrides, **flags)
    configure_logging("cli", level=settings.log_level, fmt=settings.log_format)
    state.settings = settings
    return settings
