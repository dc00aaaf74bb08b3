"""``rayline serve deploy|status``: the serving app on the running local stack.

``deploy`` builds the same application as ``deployments.app:build_app`` (what ``serve deploy``
YAML and the Helm chart use) and runs it on Serve at ``settings.serve_http_port``, with the
admin token from settings. ``--kind llm`` serves a language model behind the OpenAI API, as its
own app under ``/llm`` by default, so a tabular app at ``/`` keeps serving beside it. ``status``
asks the router over HTTP, so it works against any deployment the URL reaches.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cluster.cli.context import settings_of
from cluster.serving import APP_NAME, LLM_APP_NAME, ServeError, app_config, deploy_ready, serve_url, waiting

app = typer.Typer(help="Serve a registered model (baseline, optional candidate) behind the rollout router.",
                  no_args_is_help=True)
console = Console(width=160)


class Kind(StrEnum):
    """What the app serves (``ServeAppConfig.kind``)."""

    tabular = "tabular"
    llm = "llm"


@app.command()
def deploy(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    baseline: Annotated[str | None, typer.Option(help="Baseline ref (default models:/MODEL@champion).")] = None,
    candidate: Annotated[str | None, typer.Option(help="Candidate ref, e.g. models:/MODEL@challenger.")] = None,
    replicas: Annotated[int, typer.Option(help="Replicas per model version.")] = 1,
    num_cpus: Annotated[float, typer.Option(help="CPUs per model replica.")] = 0.25,
    controller: Annotated[bool, typer.Option(help="Deploy the rollout controller.")] = True,
    colocate: Annotated[bool, typer.Option(help="Load the versions inside the router's replicas (no extra hop; "
                                                 "small models).")] = False,
    model_calls: Annotated[str, typer.Option(help="Router → model transport: grpc (by value, faster) or actor.")
                           ] = "grpc",
    max_replicas_per_node: Annotated[int | None, typer.Option(
        min=1, help="Spread replicas over nodes: at most this many of one deployment per node.")] = None,
    kind: Annotated[Kind, typer.Option(help=(
        "tabular: the predict API; llm: a language model (Hugging Face layout) behind OpenAI's /v1/completions "
        "and /v1/chat/completions, streamed."))] = Kind.tabular,
    name: Annotated[str | None, typer.Option(help=f"Serve application name (default: {APP_NAME}; "
                                                  f"{LLM_APP_NAME} for --kind llm).")] = None,
    route_prefix: Annotated[str | None, typer.Option(help=f"Route of the app (default: /; /{LLM_APP_NAME} for "
                                                          "--kind llm, beside a tabular app).")] = None,
) -> None:
    """Deploy MODEL's baseline (and candidate) behind the router on the local stack's Serve."""
    settings = settings_of(ctx)
    llm = kind is Kind.llm
    name = name or (LLM_APP_NAME if llm else APP_NAME)
    route_prefix = route_prefix or (f"/{LLM_APP_NAME}" if llm else "/")
    cfg = app_config(settings, model, baseline, candidate, kind=kind.value, controller=controller, replicas=replicas,
                     num_cpus=num_cpus, colocate=colocate, model_calls=model_calls,
                     max_replicas_per_node=max_replicas_per_node)
    with console.status(f"deploying {model} ({', '.join(cfg.variants)})…"):
        url = deploy_ready(settings, cfg, name, route_prefix=route_prefix)
    if llm:
        console.print(f"[green]serving[/] {model} at {url}/v1 (OpenAI API: /v1/completions, /v1/chat/completions; "
                      f"admin and rollouts: --url {url})", soft_wrap=True)
    else:
        console.print(f"[green]serving[/] {model} at {url}/v1/models/{model}:predict")
    _print_waiting(waiting(url))
    if settings.admin_token is None:
        console.print("[yellow]no admin token set (RAYLINE_ADMIN_TOKEN): the admin API answers 401 to everything[/]")


def _get(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    try:
        response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise ServeError(f"no serving app answers at {url}: {exc}") from None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


@app.command()
def status(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Router base URL (default: settings' serve port).")] = None,
) -> None:
    """Readiness, versions and traffic of the serving app; exits 1 when it is not ready.

    An app up but still waiting for a model (fresh install, no champion yet) is ready; it says what to run.
    """
    settings = settings_of(ctx)
    base = serve_url(settings, url)
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=10) as client:
        ready_code, ready = _get(client, f"{base}/readyz", {})
        traffic_code, traffic = _get(client, f"{base}/admin/traffic", headers)
        rollout_code, rollout = _get(client, f"{base}/admin/rollout", headers)
    table = Table(title=f"serving at {base}")
    for col in ("check", "ok", "detail"):
        table.add_column(col)
    table.add_row("ready", _ok(ready_code == 200), f"variants {ready.get('variants')} not ready "
                  f"{ready.get('not_ready')}" if isinstance(ready, dict) else str(ready))
    table.add_row("traffic", _ok(traffic_code == 200), _describe(traffic_code, traffic, "weights"))
    table.add_row("rollout", _ok(rollout_code == 200), _describe(rollout_code, rollout, "rollout"))
    console.print(table)
    _print_waiting(ready.get("waiting") or {} if isinstance(ready, dict) else {})
    if ready_code != 200:
        raise typer.Exit(1)


def _print_waiting(waiting_for: dict[str, str]) -> None:
    """One unwrapped line per variant still waiting for its model: what is missing and what to run."""
    for variant, todo in waiting_for.items():
        console.print(f"[yellow]{variant}: {todo}[/]", soft_wrap=True)


def _ok(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def _describe(code: int, body: Any, key: str) -> str:
    if code == 401:
        return "admin token missing or wrong (set RAYLINE_ADMIN_TOKEN)"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"].get("message"))
    if isinstance(body, dict):
        return f"{body.get(key)} shadow={body.get('shadow')}" if key == "weights" else str(body.get(key, body))
    return str(body)
