"""``rayline canary``: start and steer metric-gated rollouts through the router's admin API.

Every command is an authenticated HTTP call (``Authorization: Bearer <settings.admin_token>``)
to ``/admin/rollout/...`` on the Serve HTTP port; the controller records the caller as the
actor in the audit log. ``report`` fetches the persisted timeline and writes Markdown, HTML
and a PNG locally.
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.cli.context import settings_of
from cluster.errors import RaylineError
from cluster.serving import APP_NAME, ensure_serving, serve_url
from cluster.settings import Settings
from deployments.contracts import CANDIDATE, HEADER_ACTOR
from deployments.rollout.errors import RolloutError
from deployments.rollout.spec import RolloutSpec, load_spec, ref_uri

app = typer.Typer(help="Canary and A/B rollouts: start, watch, steer, report.", no_args_is_help=True)
console = Console()

TERMINAL = ("succeeded", "rolled_back", "concluded")
UrlOpt = Annotated[str | None, typer.Option("--url", help="Router base URL (default http://HOST:SERVE_HTTP_PORT).")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why: recorded in the audit log.")]


class AdminUnreachable(RaylineError):
    """Nothing answers at the router's URL."""


class AdminClient:
    """The admin API of the serving router, with the bearer token from settings."""

    def __init__(self, settings: Settings, url: str | None = None, timeout_s: float = 30.0) -> None:
        self.base = serve_url(settings, url)
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        self.headers = {HEADER_ACTOR: getpass.getuser(), **({"Authorization": f"Bearer {token}"} if token else {})}
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = httpx.request(method, f"{self.base}{path}", json=body, headers=self.headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise AdminUnreachable(f"router admin API at {self.base} is not reachable ({exc}); "
                               f"is the app deployed (`rayline serve deploy`)?") from None
        if resp.status_code == 401:
            raise RaylineError("admin API refused the token: set RAYLINE_ADMIN_TOKEN (or admin_token in settings)")
        if resp.status_code >= 400:
            try:
                detail = resp.json()
                error = detail.get("error")   # the router's JSON errors: {"error": {"status", "field", "message"}}
                message = (error.get("message") if isinstance(error, dict) else error) or detail.get("message") \
                    or detail.get("detail") or resp.text
            except ValueError:
                message = resp.text
            raise RolloutError(f"{method} {path}: {resp.status_code} {str(message).strip()}", resp.status_code)
        return resp.json()

    def command(self, name: str, **body: Any) -> dict[str, Any]:
        return self.call("POST", f"/admin/rollout/{name}", {"actor": getpass.getuser(), **body})


def _client(ctx: typer.Context, url: str | None) -> AdminClient:
    return AdminClient(settings_of(ctx), url)


@app.command()
def start(ctx: typer.Context, spec_file: Annotated[Path, typer.Argument(help="Rollout spec YAML.")],
          url: UrlOpt = None, reason: ReasonOpt = "",
          deploy: Annotated[bool, typer.Option(help="(Re)deploy the app when it does not serve baseline and "
                                                    "candidate yet (local stack only).")] = True,
          name: Annotated[str, typer.Option(help="Serve application name to deploy.")] = APP_NAME,
          allow_worse_quality: Annotated[bool, typer.Option(
              "--allow-worse-quality", help="Start even when the quality gate refuses the candidate (worse than "
                                            "the baseline, or not measured on the same data); audited.")] = False
          ) -> None:
    """Validate SPEC.yaml, check the candidate's quality against the baseline's, make the app serve both,
    and start the rollout."""
    settings = settings_of(ctx)
    spec = load_spec(spec_file)
    client = AdminClient(settings, url)
    _check_app_free(client, spec.model)
    _check_quality(settings, spec, allow_worse_quality)
    if deploy and client.base == serve_url(settings):
        with console.status(f"checking that {spec.model} serves {spec.baseline} and {spec.candidate}…"):
            _, deployed = ensure_serving(settings, spec.model, ref_uri(spec.model, spec.baseline),
                                         ref_uri(spec.model, spec.candidate), name)
        if deployed:
            console.print(f"deployed {spec.model}: baseline {spec.baseline}, candidate {spec.candidate}")
    status_ = client.command("start", spec=spec.model_dump(mode="json"), reason=reason,
                             override_quality=allow_worse_quality)
    _print_status(status_)


def _check_quality(settings: Settings, spec: RolloutSpec, allow_worse: bool) -> None:
    """The quality gate before anything is deployed; when the two versions were never measured on the same
    dataset version, both are evaluated here on its latest version (the controller only reads figures, in
    bounded time, and judges again at start)."""
    from deployments.rollout.figures import check_before_start

    with console.status("comparing the candidate's quality with the baseline's…"):
        result, lines = check_before_start(settings, spec)
    for line in lines:
        console.print(escape(line), soft_wrap=True)
    if result is None:
        return
    if result.passed:
        console.print(escape(result.reason), soft_wrap=True)
    elif allow_worse:
        console.print(f"[yellow]{escape(result.reason)}; starting anyway (--allow-worse-quality, audited)",
                      soft_wrap=True)
    else:
        raise RolloutError(f"{result.reason}. Pass --allow-worse-quality to roll out anyway (audited)", 409)


def _check_app_free(client: AdminClient, model: str) -> None:
    """Refuse before any redeploy: an app serving another model, or one in the middle of a rollout, stays as is."""
    try:
        status_ = client.call("GET", "/admin/rollout")
    except AdminUnreachable:
        return   # no Serve at all yet
    except RolloutError as exc:
        if exc.status_code == 404:
            return   # Serve is up but no app answers on that route
        raise
    if status_.get("model") not in (None, model):
        raise RolloutError(f"the deployed app rolls out {status_.get('model')!r}, not {model!r}; "
                           f"deploy {model} with `rayline serve deploy` first", 400)
    rollout = status_.get("rollout") or {}
    if rollout.get("phase") not in (None, *TERMINAL):
        raise RolloutError(f"rollout {rollout['rollout_id']} of {model} is {rollout['phase']}; "
                           f"`rayline canary abort` it or wait for it to end", 409)


@app.command()
def status(ctx: typer.Context, url: UrlOpt = None,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every second until it ends.")] = False
           ) -> None:
    """Phase, step, traffic and the last analysis of the current rollout."""
    client = _client(ctx, url)
    while True:
        data = client.call("GET", "/admin/rollout")
        if watch:
            console.clear()
        _print_status(data)
        rollout = data.get("rollout") or {}
        if not watch or rollout.get("phase") in (None, *TERMINAL):
            return
        time.sleep(1.0)


@app.command()
def promote(ctx: typer.Context, url: UrlOpt = None, reason: ReasonOpt = "",
            full: Annotated[bool, typer.Option("--full", help="Skip remaining steps and promote now.")] = False
            ) -> None:
    """Advance one step now (or, with --full, send all traffic to the candidate and move the alias)."""
    _print_status(_client(ctx, url).command("promote", full=full, reason=reason))


@app.command()
def pause(ctx: typer.Context, url: UrlOpt = None, reason: ReasonOpt = "") -> None:
    """Stop advancing; traffic stays and a breach still rolls back."""
    _print_status(_client(ctx, url).command("pause", reason=reason))


@app.command()
def resume(ctx: typer.Context, url: UrlOpt = None, reason: ReasonOpt = "") -> None:
    """Continue a paused or held rollout from its step."""
    _print_status(_client(ctx, url).command("resume", reason=reason))


@app.command()
def abort(ctx: typer.Context, url: UrlOpt = None, reason: ReasonOpt = "") -> None:
    """Send all traffic back to the baseline now and mark the rollout rolled back."""
    _print_status(_client(ctx, url).command("abort", reason=reason))


@app.command()
def rollback(ctx: typer.Context, url: UrlOpt = None, reason: ReasonOpt = "") -> None:
    """Like abort; after a promotion (while the old version is warm) also moves the alias back."""
    _print_status(_client(ctx, url).command("rollback", reason=reason))


@app.command()
def history(ctx: typer.Context, url: UrlOpt = None,
            events: Annotated[bool, typer.Option("--events", help="Print every event.")] = False) -> None:
    """Past and current rollouts of the served model, with their outcome and reason."""
    data = _client(ctx, url).call("GET", "/admin/rollout/history")
    table = Table(title=f"rollouts of {data.get('model')}")
    for col in ("id", "baseline", "candidate", "outcome", "started", "reason"):
        table.add_column(col)
    for r in data.get("rollouts", []):
        table.add_row(r["rollout_id"], f"v{r['baseline_version']}", f"v{r['candidate_version']}", r["phase"],
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])), r["reason"])
    console.print(table)
    if events:
        for r in data.get("rollouts", []):
            for e in r["events"]:
                console.print(f"{r['rollout_id']} {e['actor']:>10} {e['command']:<12} {e['from']} → {e['to']} "
                              f"{e['reason']}")


@app.command()
def report(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id (see `history`).")],
           url: UrlOpt = None,
           out: Annotated[Path | None, typer.Option(help="Folder (default reports/rollouts/ID).")] = None) -> None:
    """Write report.md, report.html and timeline.png for a rollout."""
    from deployments.rollout.report import write_report

    bundle = _client(ctx, url).command("report", rollout_id=rollout_id)
    paths = write_report(bundle, out or Path("reports") / "rollouts" / rollout_id)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


def _print_status(data: dict[str, Any]) -> None:
    r = data.get("rollout")
    traffic = data.get("traffic") or {}
    if not r:
        console.print(f"no rollout of {data.get('model')}; traffic {traffic.get('weights')}")
        return
    table = Table(title=f"rollout {r['rollout_id']} ({r['spec']['mode']})")
    table.add_column("field")
    table.add_column("value")
    steps = [r["spec"]["ab"]["split"]] if r["spec"]["mode"] == "ab" else r["spec"]["steps"]
    rows = [("phase", r["phase"]), ("baseline / candidate", f"v{r['baseline_version']} / v{r['candidate_version']}"),
            ("step", f"{r['step_index'] + 1}/{len(steps)} {steps}"),
            ("candidate traffic", f"{100 * traffic.get('weights', {}).get(CANDIDATE, 0.0):.0f}% "
                                  f"(epoch {traffic.get('epoch')})"),
            ("failed checks", f"{r['failed_checks']}/{r['spec']['failed_checks_before_rollback']}"),
            ("reason", r["reason"])]
    if r["spec"]["mode"] == "shadow":
        rows.insert(3, ("shadow", f"mirrored to the candidate: {traffic.get('shadow') == CANDIDATE}; passing checks "
                                  f"{r.get('passed_checks', 0)}/{r['spec']['shadow']['passing_checks']}, "
                                  f"then {r['spec']['shadow']['then']}"))
    routers = data.get("routers") or {}
    if routers:
        behind = [r for r, seen in routers.items() if seen["epoch"] < traffic.get("epoch", 0)]
        rows.append(("routers", f"{len(routers)} heard from; " + (f"{len(behind)} not yet on epoch "
                                                                   f"{traffic.get('epoch')}" if behind else
                                                                   "all on the current epoch")))
    last = data.get("last_analysis")
    if last:
        for variant, s in last["stats"].items():
            p99 = f"{s['p99_ms']:.1f} ms" if s["p99_ms"] is not None else "-"
            rows.append((f"last interval: {variant}",
                         f"{s['requests']} req, {100 * s['error_rate']:.1f}% errors, p99 {p99}"))
        rows.append(("last verdict", last["status"]))
    ab = data.get("ab")
    if ab:
        rows.append(("A/B", f"{ab['test']}: effect {ab['effect']:+.4g} [{ab['ci_low']:.4g}, {ab['ci_high']:.4g}] "
                            f"p={ab['p_value']:.3g} → {ab['decision']}"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
