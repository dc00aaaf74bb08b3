"""The ``rayline`` command line: the edge where typed errors become one line and an exit code."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cluster import stack
from cluster.cli.context import AppState, settings_of, submit_job
from cluster.errors import RaylineError
from cluster.serve_ingress import Ingress

app = typer.Typer(
    name="rayline",
    help="rayline: ingest → train → register → serve with canary rollouts, on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
job_app = typer.Typer(help="Submit and follow Ray jobs (token auth passed for you).", no_args_is_help=True)
app.add_typer(job_app, name="job")
console = Console()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State directory (default .rayline).")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    ctx.obj = AppState(config=config, overrides={"state_dir": state_dir, "log_level": log_level})


@app.command()
def up(
    ctx: typer.Context,
    ray_gcs_port: Annotated[int | None, typer.Option(help="Ray GCS port (default 6379).")] = None,
    ray_dashboard_port: Annotated[int | None, typer.Option(help="Ray dashboard/job API port (8265).")] = None,
    ray_client_port: Annotated[int | None, typer.Option(help="Ray client server port (10001).")] = None,
    ray_metrics_port: Annotated[int | None, typer.Option(help="Ray Prometheus metrics port (8080).")] = None,
    ray_agent_port: Annotated[int | None, typer.Option(help="Ray job agent port (52365).")] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow server port (5000).")] = None,
    serve_ingress: Annotated[Ingress | None, typer.Option(help="Serve's HTTP ingress: proxy (Serve's Python proxy, "
                                                                "the default) or haproxy (Ray's HAProxy).")] = None,
    serve_haproxy_stats_port: Annotated[int | None, typer.Option(help="HAProxy's stats page port (8404).")] = None,
    serve_haproxy_metrics_port: Annotated[int | None, typer.Option(help="HAProxy's Prometheus port (9101).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the Ray head (default: all).")] = None,
    nodes: Annotated[int, typer.Option(min=1, help="Ray nodes: the head plus NODES-1 worker nodes, each its own "
                                                   "raylet with its own CPUs (placement and node loss are real).")] = 1,
    worker_cpus: Annotated[int | None, typer.Option(min=1, help="CPUs of each worker node (default: --num-cpus).")
                           ] = None,
) -> None:
    """Start the local stack (Ray head [+ worker nodes] + MLflow on 127.0.0.1) and record it in the state dir."""
    settings = settings_of(ctx, ray_gcs_port=ray_gcs_port, ray_dashboard_port=ray_dashboard_port,
                           ray_client_port=ray_client_port, ray_metrics_port=ray_metrics_port,
                           ray_agent_port=ray_agent_port, mlflow_port=mlflow_port, ray_num_cpus=num_cpus,
                           serve_ingress=serve_ingress, serve_haproxy_stats_port=serve_haproxy_stats_port,
                           serve_haproxy_metrics_port=serve_haproxy_metrics_port)
    what = f"Ray head, {nodes - 1} worker node(s)" if nodes > 1 else "Ray head"
    with console.status(f"starting {what} and MLflow…"):
        state, started = stack.up(settings, nodes=nodes, worker_cpus=worker_cpus)
    if not started:
        restarted = stack.restart_lost_nodes(settings)
        console.print(f"[yellow]already up[/] (state in {stack.state_path(settings)}); `rayline status` for health")
        if restarted:
            console.print(f"restarted lost worker node(s): {', '.join(restarted)}")
        return
    _print_urls(state)


def _print_urls(state: stack.StackState) -> None:
    table = Table(title="rayline local stack")
    for col in ("component", "pid", "urls"):
        table.add_column(col)
    for comp in state.components.values():
        table.add_row(comp.name, str(comp.pid), "  ".join(f"{k}={v}" for k, v in comp.urls.items()))
    console.print(table)


@app.command()
def status(ctx: typer.Context) -> None:
    """Health of each component; exits 1 when anything is down."""
    settings = settings_of(ctx)
    checks = stack.status(settings)
    table = Table(title="rayline status")
    for col in ("component", "check", "ok", "detail"):
        table.add_column(col)
    for h in checks:
        table.add_row(h.component, h.check, "[green]up[/]" if h.ok else "[red]DOWN[/]", h.detail)
    console.print(table)
    if not all(h.ok for h in checks):
        raise typer.Exit(1)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop exactly what `up` started (idempotent)."""
    settings = settings_of(ctx)
    stopped = stack.down(settings)
    console.print(f"stopped {len(stopped)} processes" if stopped else "nothing to stop")


@app.command()
def env(ctx: typer.Context) -> None:
    """Print shell exports for plain `ray job submit` / MLflow clients: eval "$(rayline env)".

    Also stamps the checkout here with its commit (``.rayline-source``), so plain submissions keep lineage.
    """
    from cluster.provenance import write_stamp

    settings = settings_of(ctx)
    write_stamp(Path.cwd())
    exports = {**settings.ray_client_env(), "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri)}
    exports.pop("RAY_AUTH_TOKEN", None)
    if settings.ray_token():
        exports["RAY_AUTH_TOKEN_PATH"] = str(Path(str(settings.ray_auth_token_path)).absolute())
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    entrypoint: Annotated[list[str], typer.Argument(help="Command to run, e.g. python -m jobs.hello")],
    working_dir: Annotated[Path, typer.Option(help="Directory uploaded as the job's working dir.")] = Path("."),
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream logs until the job ends.")] = False,
    submission_id: Annotated[str | None, typer.Option(help="Job id (resubmitting the same run name).")] = None,
) -> None:
    """Submit a Ray job (same as `ray job submit --working-dir . -- ENTRYPOINT`)."""
    submit_job(settings_of(ctx), entrypoint, follow=follow, working_dir=working_dir, submission_id=submission_id)


@job_app.command("status")
def job_status(ctx: typer.Context, job_id: str) -> None:
    """Print a job's status."""
    from cluster.jobs_client import JobsClient

    print(JobsClient(settings_of(ctx)).status(job_id))


@job_app.command("logs")
def job_logs(ctx: typer.Context, job_id: str) -> None:
    """Print a job's logs."""
    from cluster.jobs_client import JobsClient

    print(JobsClient(settings_of(ctx)).logs(job_id), end="")


@job_app.command("list")
def job_list(ctx: typer.Context) -> None:
    """List jobs on the cluster."""
    from cluster.jobs_client import JobsClient

    table = Table(title="jobs")
    for col in ("submission id", "status", "entrypoint"):
        table.add_column(col)
    for job in JobsClient(settings_of(ctx)).list():
        table.add_row(str(job.submission_id), str(job.status.value), job.entrypoint)
    console.print(table)


def _register_subcommands() -> None:
    """Capability CLIs: each module exposes a Typer ``app`` (a group) or one ``command`` function."""
    import importlib

    for module, name in (("cluster.cli.ingest", "ingest"), ("cluster.cli.train", "train"),
                         ("cluster.cli.models", "models"), ("cluster.cli.canary", "canary"),
                         ("cluster.cli.serve", "serve"), ("cluster.cli.demo", "demo"),
                         ("cluster.cli.tokenize", "tokenize")):
        try:
            sub = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        if hasattr(sub, "command"):
            app.command(name)(sub.command)
        else:
            app.add_typer(sub.app, name=name)


_register_subcommands()


def main() -> None:
    try:
        app()
    except RaylineError as exc:
        print(f"rayline: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
