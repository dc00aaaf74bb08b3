"""What every ``rayline`` subcommand shares: the global options and how they become Settings."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cluster.errors import JobError
from cluster.logs import configure_logging
from cluster.settings import Settings, load_settings

console = Console()


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
        final = client.follow(job_id, lambda line: print(line, flush=True))
        console.print(f"job {job_id}: {final}")
        if final != "SUCCEEDED":
            raise JobError(f"{what} {job_id} ended {final}; `rayline job logs {job_id}` for details")
    return job_id


def settings_of(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings for this invocation: defaults → YAML → RAYLINE_* env → global and command flags."""
    root = ctx.find_root()
    state: AppState = root.obj if isinstance(root.obj, AppState) else AppState()
    settings = load_settings(state.config, **state.overrides, **flags)
    configure_logging("cli", level=settings.log_level, fmt=settings.log_format)
    state.settings = settings
    return settings
