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
from cluster.registry import Registry
from cluster.settings import Settings, job_env

ROOT = Path(__file__).resolve().parent.parent
RAW_TABLE = "examples/data/customers.csv"
CONTRACT = "examples/contracts/customers.yaml"
DATASET = "customers"
MODEL = "customers-churn"


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


def _job(ctx: DemoContext, entrypoint: str) -> dict[str, Any]:
    """Run a rayline job the way users do: through the Ray job API with the repo as working dir."""
    from cluster.jobs_client import JobsClient

    return JobsClient(ctx.settings).run(entrypoint, working_dir=ROOT, env=job_env(ctx.settings))


def stage_ingest(ctx: DemoContext) -> str:
    result = _job(ctx, f"python -m jobs.ingest --source {RAW_TABLE} --contract {CONTRACT} --dataset {DATASET} --mlflow")
    counts = result["counts"]
    ctx.results["dataset_version"] = result["version"]
    return (f"{DATASET} {result['version']}: {counts.get('rows_in')} rows in → {counts.get('rows_out')} clean, "
            f"{counts.get('rows_quarantined')} quarantined with reasons, {counts.get('rows_deduplicated')} duplicates")


def _train(ctx: DemoContext, config: str, key: str) -> str:
    result = _job(ctx, f"python -m jobs.train --config {config}")
    if not result.get("registered"):
        raise RuntimeError(f"{config}: model not registered ({result.get('gate')})")
    version = result["registered"].rsplit("/", 1)[-1]
    ctx.results[key] = version
    acc = result["metrics"].get("val_accuracy")
    return f"registered {MODEL}/{version} (val_accuracy {acc:.3f}, run {result['run_id'][:8]})"


def stage_train_v1(ctx: DemoContext) -> str:
    return _train(ctx, "examples/demo/train_v1.yaml", "v1")


def stage_evaluate_v1(ctx: DemoContext) -> str:
    result = _job(ctx, f"python -m jobs.evaluate --model models:/{MODEL}/{ctx.results['v1']} --dataset latest")
    shown = {k: round(v, 3) for k, v in result.get("metrics", {}).items() if isinstance(v, float)}
    return f"evaluated v{ctx.results['v1']}: {shown} (plot logged to MLflow)"


def stage_champion_v1(ctx: DemoContext) -> str:
    Registry(ctx.settings).set_alias(MODEL, "champion", ctx.results["v1"])
    return f"{MODEL}@champion → v{ctx.results['v1']}"


def stage_train_v2(ctx: DemoContext) -> str:
    return _train(ctx, "examples/demo/train_v2.yaml", "v2")


def stages() -> list[Stage]:
    return [
        ("local stack up (Ray head + MLflow)", stage_stack_up),
        ("ingest the shipped raw table (Ray job)", stage_ingest),
        ("train v1: 2 workers, fp16 compression, checkpoints (Ray job)", stage_train_v1),
        ("evaluate v1 (Ray job)", stage_evaluate_v1),
        ("register v1 as champion", stage_champion_v1),
        ("train v2: PowerSGD compression, registered as challenger", stage_train_v2),
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
