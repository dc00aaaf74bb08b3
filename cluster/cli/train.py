"""``rayline train CONFIG.yaml``: validate, then train here (local Ray) or submit it as a Ray job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cluster.cli.context import settings_of, submit_job

console = Console()


def command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Training config YAML.")],
    submit: Annotated[bool, typer.Option("--submit", help="Submit as a Ray job to the stack's cluster.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="With --submit: stream logs until done.")] = False,
    run_name: Annotated[str | None, typer.Option(help="Override run_name (same name resumes).")] = None,
    new_run: Annotated[bool, typer.Option("--new-run", help="Start the run name over (old folder kept aside).")
                       ] = False,
    resume_with_changes: Annotated[bool, typer.Option(
        "--resume-with-changes", help="Resume the run name although its config changed (audited in MLflow).")] = False,
) -> None:
    """Train a model from CONFIG.yaml (bad configs fail here, before anything starts)."""
    from train.config import load_config

    settings = settings_of(ctx)
    cfg = load_config(config)  # fail fast on the client, naming the field
    args = ["--config", str(config), *(["--run-name", run_name] if run_name else []),
            *(["--new-run"] if new_run else []), *(["--resume-with-changes"] if resume_with_changes else [])]
    if not submit:
        from jobs.train import main

        main(args)
        return
    entry = ["python", "-m", "jobs.train", *args]
    submit_job(settings, entry, what=f"training job (run {run_name or cfg.run_name})", follow=follow)
