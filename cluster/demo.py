"""The end-to-end demo: the local stack and the whole pipeline, one stage at a time.

Each stage is a plain function taking the shared :class:`DemoContext`; the runner prints
readable progress, times each stage, and always tears the stack down unless asked to keep it.
"""

from __future__ import annotations

import os
import secrets
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster import stack
from cluster.processes import wait_until
from cluster.registry import Registry
from cluster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RAW_TABLE = "examples/data/customers.csv"
CONTRACT = "examples/contracts/customers.yaml"
DATASET = "customers"
MODEL = "customers-churn"
CANARY_RPS = 25.0
CANARY_TIMEOUT_S = 180.0
TERMINAL_PHASES = {"succeeded", "rolled_back", "concluded"}
# The language-model track's corpus ships with Python itself: the standard library's own sources.
LM_SOURCES = ("asyncio", "json")
LM_CONTRACT = "examples/contracts/pystdlib_text.yaml"
LM_DATASET = "pystdlib"
LM_MODEL = "pystdlib-gpt"


@dataclass
class DemoContext:
    settings: Settings
    console: Console
    results: dict[str, Any] = field(default_factory=dict)


Stage = tuple[str, Callable[[DemoContext], str]]


def stage_stack_up(ctx: DemoContext) -> str:
    _state, started = stack.up(ctx.settings)
    # Ray loads its auth token once per process: set it before this process first touches Ray.
    os.environ.update(stack.ray_env(ctx.settings))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    unhealthy = [h.check for h in stack.status(ctx.settings) if not h.ok]
    if unhealthy:
        raise RuntimeError(f"stack unhealthy: {', '.join(unhealthy)}")
    return ("started" if started else "already up") + f": Ray {ctx.settings.ray_dashboard_url}, " \
        f"MLflow {ctx.settings.mlflow_tracking_uri}"


def _job(ctx: DemoContext, entrypoint: str) -> dict[str, Any]:
    """Run a rayline job the way users do: through the Ray job API with the repo as working dir."""
    from cluster.jobs_client import JobsClient

    return JobsClient(ctx.settings).run(entrypoint, working_dir=ROOT)


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


def _deploy(ctx: DemoContext, candidate: str | None) -> str:
    from cluster import serving

    cfg = serving.app_config(ctx.settings, MODEL, f"models:/{MODEL}@champion", candidate)
    return serving.deploy_ready(ctx.settings, cfg)


def stage_serve_v1(ctx: DemoContext) -> str:
    from cluster.loadgen import run_load, valid_records
    from models.packaging import load_model

    url = _deploy(ctx, candidate=None)
    ctx.results["url"] = url
    preprocessing = load_model(f"models:/{MODEL}@champion").preprocessing
    ctx.results["records"] = valid_records(ROOT / RAW_TABLE, preprocessing)
    result = run_load(url, MODEL, ctx.results["records"], rate_per_s=20, duration_s=3)
    if result.failed:
        raise RuntimeError(f"serving v1: {result.failed}/{result.sent} requests failed: {result.status_counts}")
    return f"serving champion v{ctx.results['v1']} at {url}/v1/models/{MODEL}:predict ({result.ok}/{result.sent} ok)"


def _canary(ctx: DemoContext, spec_file: str, expect: str) -> tuple[dict[str, Any], Any, float]:
    """Deploy champion + challenger, start the rollout under steady load, wait for its verdict."""
    from cluster.cli.canary import AdminClient
    from cluster.loadgen import BackgroundLoad
    from deployments.rollout.spec import load_spec

    url = _deploy(ctx, candidate=f"models:/{MODEL}@challenger")
    admin = AdminClient(ctx.settings, url)
    load = BackgroundLoad(url, MODEL, ctx.results["records"], rate_per_s=CANARY_RPS).start()
    t0 = time.monotonic()
    try:
        spec = load_spec(ROOT / spec_file)
        started = admin.command("start", spec=spec.model_dump(mode="json"), reason="demo")
        rollout_id = started["rollout"]["rollout_id"]
        final: dict[str, Any] = {}

        def decided() -> bool:
            nonlocal final
            final = admin.call("GET", "/admin/rollout")["rollout"]
            return final["phase"] in TERMINAL_PHASES

        if not wait_until(decided, timeout_s=CANARY_TIMEOUT_S, interval_s=0.5):
            raise RuntimeError(f"rollout {rollout_id} undecided after {CANARY_TIMEOUT_S:.0f} s: {final['phase']}")
    finally:
        result = load.stop()
    if final["phase"] != expect:
        raise RuntimeError(f"rollout {rollout_id} ended {final['phase']}, expected {expect}: {final.get('reason')}")
    ctx.results.setdefault("rollouts", []).append(rollout_id)
    return final, result, time.monotonic() - t0


def _gate_passed(ctx: DemoContext) -> str:
    """The quality gate's figures, as the controller recorded them in the current rollout's start event."""
    from cluster.cli.canary import AdminClient

    rollouts = AdminClient(ctx.settings, ctx.results["url"]).call("GET", "/admin/rollout/history")["rollouts"]
    quality = rollouts[-1]["events"][0].get("quality") or {}
    if not quality.get("passed"):
        raise RuntimeError(f"rollout started without a passed quality gate: {quality}")
    return f"quality gate passed ({quality['metric']} {quality['candidate']:.4f} vs {quality['baseline']:.4f})"


def stage_canary_v2(ctx: DemoContext) -> str:
    _, load, seconds = _canary(ctx, "examples/demo/canary_v2.yaml", expect="succeeded")
    champion = Registry(ctx.settings).by_alias(MODEL, "champion").version
    if champion != ctx.results["v2"]:
        raise RuntimeError(f"rollout succeeded but champion is v{champion}, not v{ctx.results['v2']}")
    return (f"{_gate_passed(ctx)}; v{ctx.results['v2']} promoted to 100 % in {seconds:.0f} s; champion → "
            f"v{champion}; {load.ok}/{load.sent} requests ok during the rollout")


def stage_worse_candidate(ctx: DemoContext) -> str:
    """Propose the old v1 again: worse than champion v2 on the same data, refused before any traffic moves."""
    from cluster.cli.canary import AdminClient
    from deployments.rollout.errors import RolloutError
    from deployments.rollout.spec import load_spec

    registry = Registry(ctx.settings)
    registry.set_alias(MODEL, "challenger", ctx.results["v1"])
    spec = load_spec(ROOT / "examples/demo/canary_worse.yaml")
    admin = AdminClient(ctx.settings, ctx.results["url"])
    before = admin.call("GET", "/admin/rollout")["rollout"]["rollout_id"]
    try:
        admin.command("start", spec=spec.model_dump(mode="json"), reason="demo")
    except RolloutError as exc:
        message = str(exc)
    else:
        raise RuntimeError(f"the quality gate let v{ctx.results['v1']} (worse than the champion) start")
    if "quality gate:" not in message:
        raise RuntimeError(f"v{ctx.results['v1']} refused, but not by the quality gate: {message}")
    if admin.call("GET", "/admin/rollout")["rollout"]["rollout_id"] != before:
        raise RuntimeError("a refused candidate left a new rollout behind")
    champion = registry.by_alias(MODEL, "champion").version
    figures = message.split("quality gate: ", 1)[1].split(". Start with", 1)[0]
    return (f"v{ctx.results['v1']} refused before any traffic ({figures}); no rollout started; "
            f"champion stays v{champion}")


def stage_broken_v3(ctx: DemoContext) -> str:
    """Register v3 = v2 wrapped to fail 30 % of calls, make it the challenger, canary it.

    v3 answers with v2's weights whenever it answers, so its offline quality *is* v2's: it carries v2's
    lineage and validation figures (tagged as inherited) and passes the quality gate. Its fault is in
    serving, which only the canary can see.
    """
    import mlflow

    from models.faulty import FaultyModel
    from models.packaging import load_model, log_model

    v2 = load_model(f"models:/{MODEL}/{ctx.results['v2']}")
    registry = Registry(ctx.settings)
    mlflow.set_experiment(ctx.settings.mlflow_experiment)
    with mlflow.start_run(run_name="demo-broken-v3"):
        info = log_model(FaultyModel(v2.module, failure_rate=0.3), v2.preprocessing, registered_model_name=MODEL)
    v3 = str(info.registered_model_version)
    inherited = {k: v for k, v in registry.version(MODEL, ctx.results["v2"]).tags.items()
                 if k in ("dataset", "dataset_version") or k.startswith("val_")}
    for key, value in {**inherited, "quality_from": f"v{ctx.results['v2']} (same weights)",
                       "demo": "deliberately broken: fails 30% of requests"}.items():
        registry.set_version_tag(MODEL, v3, key, value)
    registry.set_alias(MODEL, "challenger", v3)
    ctx.results["v3"] = v3
    final, load, seconds = _canary(ctx, "examples/demo/canary_v3_broken.yaml", expect="rolled_back")
    gate = _gate_passed(ctx)
    champion = registry.by_alias(MODEL, "champion").version
    return (f"v{v3} rolled back automatically after {seconds:.0f} s ({final.get('reason')}); {gate}, same weights "
            f"as v{ctx.results['v2']}: the fault is in serving; champion stays v{champion}; "
            f"{load.failed}/{load.sent} requests failed in all")


def stage_report(ctx: DemoContext) -> str:
    from cluster.cli.canary import AdminClient
    from deployments.rollout.report import write_report

    admin = AdminClient(ctx.settings, ctx.results["url"])
    written = []
    for rollout_id in ctx.results.get("rollouts", []):
        bundle = admin.command("report", rollout_id=rollout_id)
        paths = write_report(bundle, ROOT / "reports" / "rollouts" / rollout_id)
        written.append(str(paths.get("markdown", next(iter(paths.values())))))
    return "canary reports: " + ", ".join(written)


def stage_lm_ingest(ctx: DemoContext) -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = " ".join(f"--source {stdlib / package}" for package in LM_SOURCES)
    result = _job(ctx, f"python -m jobs.ingest {sources} --contract {LM_CONTRACT} --dataset {LM_DATASET} --mlflow")
    counts = result["counts"]
    return (f"{LM_DATASET} {result['version']}: {counts['rows_in']} files of {', '.join(LM_SOURCES)} → "
            f"{counts['rows_out']} documents, {counts['rows_quarantined']} quarantined with reasons, "
            f"{counts['rows_deduplicated']} duplicates")


def stage_lm_tokenize(ctx: DemoContext) -> str:
    result = _job(ctx, f"python -m jobs.tokenize --dataset {LM_DATASET}")
    tokens = result["tokens"]
    return (f"tokenizer {result['tokenizer']} (byte-level BPE, {result['vocab_size']} tokens) → {result['dtype']} "
            f"shards: {tokens['train']} train / {tokens['validation']} validation tokens")


def stage_lm_train(ctx: DemoContext) -> str:
    result = _job(ctx, "python -m jobs.train --config examples/demo/train_lm.yaml")
    if not result.get("registered"):
        raise RuntimeError(f"language model not registered ({result.get('gate')})")
    version = result["registered"].rsplit("/", 1)[-1]
    ctx.results["lm"] = version
    perplexity = result["metrics"]["val_perplexity"]
    return f"registered {LM_MODEL}/{version} (val_perplexity {perplexity:.1f}) with a Hugging Face GPT-2 folder"


def stage_lm_evaluate(ctx: DemoContext) -> str:
    """The registered folder, as others load it: ``transformers`` alone computes perplexity and samples text."""
    result = _job(ctx, f"python -m jobs.evaluate --model models:/{LM_MODEL}/{ctx.results['lm']} "
                       f"--dataset {LM_DATASET}/latest")
    sample = result["completions"][0]
    return (f"eval_perplexity {result['metrics']['eval_perplexity']:.1f} on the validation tokens; "
            f"sampled: {(sample['prompt'] + sample['completion'])[:80]!r}")


def stage_lm_serve(ctx: DemoContext) -> str:
    """The registered GPT behind the OpenAI API on Ray Serve, called with the official ``openai`` client."""
    import openai

    from cluster import serving

    base_url = serving.deploy_llm(ctx.settings, f"models:/{LM_MODEL}/{ctx.results['lm']}")
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    started, first, pieces = time.monotonic(), None, []
    for event in client.completions.create(model=LM_MODEL, prompt="import asyncio\n\n\nasync def ", max_tokens=32,
                                           temperature=0.8, seed=0, stream=True):
        first = first if first is not None else time.monotonic() - started
        pieces.extend(choice.text for choice in event.choices)
    text = "".join(pieces)
    if not text:
        raise RuntimeError(f"the stream from {base_url} carried no text")
    return (f"streamed from {base_url}/completions with the openai client: first token after {first * 1000:.0f} ms, "
            f"{len(pieces)} events: {('async def ' + text)[:60]!r}")


def stages() -> list[Stage]:
    return [
        ("local stack up (Ray head + MLflow)", stage_stack_up),
        ("ingest the shipped raw table (Ray job)", stage_ingest),
        ("train v1: 2 workers, fp16 compression, checkpoints (Ray job)", stage_train_v1),
        ("evaluate v1 (Ray job)", stage_evaluate_v1),
        ("register v1 as champion", stage_champion_v1),
        ("serve the champion (Ray Serve: router + model replicas + rollout controller)", stage_serve_v1),
        ("train v2: PowerSGD compression, registered as challenger", stage_train_v2),
        ("canary v2: quality gate, then → 100 % under load; the champion alias moves", stage_canary_v2),
        ("propose the worse v1 again: the quality gate refuses it before any traffic", stage_worse_candidate),
        ("canary a deliberately broken v3: automatic rollback", stage_broken_v3),
        ("canary reports (Markdown, HTML, PNG)", stage_report),
        ("language model: ingest Python's own asyncio + json sources as a text dataset (Ray job)", stage_lm_ingest),
        ("tokenize: a byte-level BPE trained on that version, packed token shards (Ray job)", stage_lm_tokenize),
        ("train a tiny GPT on the token shards, registered in the Hugging Face layout (Ray job)", stage_lm_train),
        ("evaluate the GPT with transformers alone: perplexity and a sampled completion (Ray job)",
         stage_lm_evaluate),
        ("serve the GPT behind the OpenAI API (continuous batching) and stream a completion", stage_lm_serve),
    ]


def run_demo(settings: Settings, console: Console, keep_up: bool = False) -> DemoContext:
    if settings.admin_token is None:
        # The rollout admin API always needs a bearer token; the demo makes one for this run.
        settings = settings.model_copy(update={"admin_token": SecretStr(secrets.token_hex(16))})
        console.print("admin token for this run: export RAYLINE_ADMIN_TOKEN="
                      f"{settings.admin_token.get_secret_value()}")
    ctx = DemoContext(settings=settings, console=console)
    timings: list[tuple[str, float, str]] = []
    started = time.monotonic()
    try:
        for i, (title, fn) in enumerate(stages(), 1):
            console.rule(f"[bold]{i}. {title}")
            t0 = time.monotonic()
            with console.status(title + "…"):
                outcome = fn(ctx)
            timings.append((title, time.monotonic() - t0, outcome))
            # One line per outcome, never wrapped or read as markup: logs and tests grep these lines.
            console.print(f"[green]✓[/] {escape(outcome)}  [dim]({timings[-1][1]:.1f} s)[/]", soft_wrap=True)
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
