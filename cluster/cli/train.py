"""``rayline train CONFIG.yaml``: validate, then train here (local Ray) or submit it as a Ray job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cluster.cli.context import settings_of, submit_job

if TYPE_CHECKING:
    from cluster.settings import Settings
    from train.config import TrainConfig

console = Console()


def command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Training config YAML.")],
    submit: Annotated[bool, typer.Option("--submit", help="Submit as a Ray job to the stack's cluster.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="With --submit: stream logs until done.")] = False,
    run_name: Annotated[str | None, typer.Option(help="Override run_name (same name resumes).")] = None,
    wait: Annotated[float | None, typer.Option(
        "--wait-for-resources", metavar="SECONDS",
        help="With --submit: wait this long for free CPUs/GPUs (default: 600 on a cluster with an "
             "autoscaler, else fail at once).")] = None,
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
    what = f"training job (run {run_name or cfg.run_name})"
    check_capacity(settings, cfg, str(config), what, wait)
    entry = ["python", "-m", "jobs.train", *args]
    submit_job(settings, entry, what=what, follow=follow)


def check_capacity(settings: Settings, cfg: TrainConfig, config: str, what: str, wait_s: float | None) -> None:
    """Before submitting: does the worker group fit in what the cluster has free (Ray Train would wait forever)?"""
    from cluster.capacity import training_need
    from cluster.jobs_client import JobsClient

    fix = (f"free them (e.g. `serve shutdown`, or stop other jobs), lower scaling.num_workers or "
           f"scaling.cpus_per_worker in {config}, or give the cluster more (`rayline down && rayline up --num-cpus N`)")
    JobsClient(settings).ensure_fits(training_need(cfg.scaling), what, fix, wait_s,
                                     say=lambda line: print(line, file=sys.stderr, flush=True))
