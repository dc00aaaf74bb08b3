"""The end-to-end demo: the local stack and the whole pipeline, one stage at a time.

Each stage is a plain function taking the shared :class:`DemoContext`; the runner prints
readable progress, times each stage, and always tears the stack down unless asked to keep it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster import stack
from cluster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DemoContext:
    settings: Settings
    console: Console
    quick: bool = False
    results: dict[str, Any] = field(default_factory=dict)


Stage = tuple[str, Callable[[DemoContext], str]]


def stage_stack_up(ctx: DemoContext) -> str:
    _state, started = stack.up(ctx.settings)
    unhealthy = [h.check for h in stack.status(ctx.settings) if not h.ok]
    if unhealthy:
        raise RuntimeError(f"stack unhealthy: {', '.join(unhealthy)}")
    return ("started" if started else "already up") + f": Ray {ctx.settings.ray_dashboard_url}, " \
        f"MLflow {ctx.settings.mlflow_tracking_uri}"


def stage_hello_job(ctx: DemoContext) -> str:
    from cluster.jobs_client import JobsClient

    client = JobsClient(ctx.settings)
    job_id = client.submit("python -m jobs.hello --tasks 4", working_dir=ROOT)
    final = client.wait(job_id, timeout_s=300)
    if final != "SUCCEEDED":
        raise RuntimeError(f"job {job_id} ended {final}: {client.logs(job_id)[-500:]}")
    return f"ray job {job_id} {final}"


def stages() -> list[Stage]:
    return [
        ("local stack up (Ray head + MLflow)", stage_stack_up),
        ("submit a Ray job through the job API", stage_hello_job),
    ]


def run_demo(settings: Settings, console: Console, keep_up: bool = False, quick: bool = False) -> DemoContext:
    ctx = DemoContext(settings=settings, console=console, quick=quick)
    timings: list[tuple[str, float, str]] = []
    started = time.monotonic()
    try:
        for i, (title, fn) in enumerate(stages(), 1):
            console.rule(f"[bold]{i}. {title}")
            t0 = time.monotonic()
            with console.status(title + "…"):
                outcome = fn(ctx)
            timings.append((title, time.monotonic() - t0, outcome))
            console.print(f"[green]✓[/] {outcome}  [dim]({timings[-1][1]:.1f} s)[/]")
    finally:
        _summary(ctx, timings, time.monotonic() - started)
        if keep_up:
            console.print("stack left up (`rayline down` stops it)")
        else:
            stack.down(settings)
            console.print("stack stopped")
    return ctx


def _summary(ctx: DemoContext, timings: list[tuple[str, float, str]], total: float) -> None:
    table = Table(title=f"demo: {len(timings)} stages in {total:.0f} s")
    for col in ("stage", "seconds", "outcome"):
        table.add_column(col)
    for title, seconds, outcome in timings:
        table.add_row(title, f"{seconds:.1f}", outcome)
    ctx.console.print(table)
    s = ctx.settings
    ctx.console.print(
        "Where to look:\n"
        f"  Ray dashboard   {s.ray_dashboard_url}\n"
        f"  MLflow UI       {s.mlflow_tracking_uri}  (runs, registered models, aliases, lineage)\n"
        f"  Ray metrics     http://{s.host}:{s.ray_metrics_port}/metrics\n"
        f"  Reports         {ROOT / 'reports'}"
    )
