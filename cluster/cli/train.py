"""``rayline train CONFIG.yaml``: validate, then train here (local Ray) or submit it as a Ray job."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cluster.cli.context import settings_of

console = Console()


def command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Training config YAML.")],
    submit: Annotated[bool, typer.Option("--submit", help="Submit as a Ray job to the stack's cluster.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="With --submit: stream logs until done.")] = False,
    run_name: Annotated[str | None, typer.Option(help="Override run_name (same name resumes).")] = None,
) -> None:
    """Train a model from CONFIG.yaml (bad configs fail here, before anything starts)."""
    from train.config import load_config

    settings = settings_of(ctx)
    cfg = load_config(config)  # fail fast on the client, naming the field
    if not submit:
        from jobs.train import main

        main(["--config", str(config), *(["--run-name", run_name] if run_name else [])])
        return
    from cluster.jobs_client import JobsClient
    from train.tracking import GIT_COMMIT_ENV, git_commit

    entry = ["python", "-m", "jobs.train", "--config", str(config)] + (["--run-name", run_name] if run_name else [])
    client = JobsClient(settings)
    job_id = client.submit(shlex.join(entry), working_dir=".", env={
        GIT_COMMIT_ENV: git_commit(), "RAYLINE_MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "RAYLINE_CHECKPOINTS_ROOT": str(settings.checkpoints_root),
        "RAYLINE_DATASETS_ROOT": str(Path(str(settings.datasets_root)).absolute()),
    })
    console.print(f"submitted training job [bold]{job_id}[/] (run {run_name or cfg.run_name})")
    if follow:
        final = client.follow(job_id, lambda line: print(line, flush=True))
        console.print(f"job {job_id}: {final}")
        if final != "SUCCEEDED":
            raise typer.Exit(1)
