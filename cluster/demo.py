"""The end-to-end demo: the local stack and the whole pipeline, one stage at a time.

Each stage is a plain function taking the shared :class:`DemoContext`; the runner prints
readable progress, times each stage, and always tears the stack down unless asked to keep it.
"""

from __future__ import annotations

import os
import secrets
import sysconfig
import threading
import time
from collections import Counter
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
# A step advances once the candidate's error rate is shown under 5 % (Wilson bound at 99 %): ~100 candidate
# requests without an error. At 40/s a 25 % step has them in ~10 s (at 25/s the three steps took 35 s).
CANARY_RPS = 40.0
CANARY_TIMEOUT_S = 180.0
TERMINAL_PHASES = {"succeeded", "rolled_back", "concluded"}
# The language-model track's corpus ships with Python itself: the standard library's own sources.
LM_SOURCES = ("asyncio", "json")
LM_CONTRACT = "examples/contracts/pystdlib_text.yaml"
LM_DATASET = "pystdlib"
LM_MODEL = "pystdlib-gpt"
LM_PROMPTS = ("import asyncio\n\n\nasync def ", "import json\n\n\ndef ", "class ", "    def __init__(self, ",
              "if __name__ == ")
LM_USERS = 50    # canary traffic: completions from this many sticky users (the `user` field)


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

    url = _deploy(ctx, candidate=f"models:/{MODEL}@challenger")
    load = BackgroundLoad(url, MODEL, ctx.results["records"], rate_per_s=CANARY_RPS)
    final, result, seconds, _ = _rollout(ctx, AdminClient(ctx.settings, url), spec_file, load)
    if final["phase"] != expect:
        raise RuntimeError(f"rollout {final['rollout_id']} ended {final['phase']}, expected {expect}: "
                           f"{final.get('reason')}")
    return final, result, seconds


def _rollout(ctx: DemoContext, admin: Any, spec_file: str, load: Any
             ) -> tuple[dict[str, Any], Any, float, list[dict[str, Any]]]:
    """Start ``spec_file``'s rollout through the admin API ``rayline canary start`` calls, under ``load``
    (started here, stopped after), and wait for its terminal phase: (final rollout status, load result, seconds,
    the controller's analyses seen while polling, oldest first)."""
    from deployments.rollout.spec import load_spec

    load.start()
    t0 = time.monotonic()
    try:
        spec = load_spec(ROOT / spec_file)
        started = admin.command("start", spec=spec.model_dump(mode="json"), reason="demo")
        rollout_id = started["rollout"]["rollout_id"]
        final: dict[str, Any] = {}
        analyses: list[dict[str, Any]] = []

        def decided() -> bool:
            nonlocal final
            status = admin.call("GET", "/admin/rollout")
            final = status["rollout"]
            if status.get("last_analysis") and status["last_analysis"] not in analyses[-1:]:
                analyses.append(status["last_analysis"])
            return final["phase"] in TERMINAL_PHASES

        if not wait_until(decided, timeout_s=CANARY_TIMEOUT_S, interval_s=0.5):
            raise RuntimeError(f"rollout {rollout_id} undecided after {CANARY_TIMEOUT_S:.0f} s: {final['phase']}")
    finally:
        result = load.stop()
    ctx.results.setdefault("rollouts", []).append(rollout_id)
    return final, result, time.monotonic() - t0, analyses


def _gate_passed(ctx: DemoContext, url: str | None = None) -> str:
    """The quality gate's figures, as the controller recorded them in the current rollout's start event."""
    from cluster.cli.canary import AdminClient

    rollouts = AdminClient(ctx.settings, url or ctx.results["url"]).call("GET", "/admin/rollout/history")["rollouts"]
    quality = rollouts[-1]["events"][0].get("quality") or {}
    if not quality.get("passed"):
        raise RuntimeError(f"rollout started without a passed quality gate: {quality}")
    return f"quality gate passed ({quality['metric']} {quality['candidate']:.4g} vs {quality['baseline']:.4g})"


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


def _train_lm(ctx: DemoContext, config: str, key: str, *flags: str) -> tuple[str, dict[str, Any]]:
    """A GPT training job; the registered version (kept under ``key``) and the job's metrics."""
    result = _job(ctx, " ".join(("python -m jobs.train --config", config, *flags)))
    if not result.get("registered"):
        raise RuntimeError(f"{config}: language model not registered ({result.get('gate')})")
    ctx.results[key] = result["registered"].rsplit("/", 1)[-1]
    return ctx.results[key], result["metrics"]


def stage_lm_train(ctx: DemoContext) -> str:
    version, metrics = _train_lm(ctx, "examples/demo/train_lm.yaml", "lm")
    return (f"registered {LM_MODEL}/{version} (val_perplexity {metrics['val_perplexity']:.1f}) with a Hugging Face "
            f"GPT-2 folder")


def stage_lm_evaluate(ctx: DemoContext) -> str:
    """The registered folder, as others load it: ``transformers`` alone computes perplexity and samples text."""
    result = _job(ctx, f"python -m jobs.evaluate --model models:/{LM_MODEL}/{ctx.results['lm']} "
                       f"--dataset {LM_DATASET}/latest")
    sample = result["completions"][0]
    return (f"eval_perplexity {result['metrics']['eval_perplexity']:.1f} on the validation tokens; "
            f"sampled: {(sample['prompt'] + sample['completion'])[:80]!r}")


def stage_lm_train_v2(ctx: DemoContext) -> str:
    """v2 = v1 trained on: v1's run resumed from its last checkpoint for one more epoch (audited as a change)."""
    version, metrics = _train_lm(ctx, "examples/demo/train_lm_v2.yaml", "lm_v2", "--resume-with-changes")
    return (f"registered {LM_MODEL}/{version} (val_perplexity {metrics['val_perplexity']:.1f}) as challenger: "
            f"v{ctx.results['lm']}'s run resumed at step {metrics.get('resumed_from_step')} for one more epoch "
            f"({metrics.get('steps_this_attempt')} steps)")


def _lm_client(base_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def stage_lm_serve(ctx: DemoContext) -> str:
    """The router app for a language model (``kind: llm``): the champion serves, the challenger waits at 0 %;
    a completion streamed with the official ``openai`` client names the variant and version that answered."""
    from cluster import serving
    from deployments.contracts import HEADER_VARIANT, HEADER_VERSION

    cfg = serving.app_config(ctx.settings, LM_MODEL, f"models:/{LM_MODEL}@champion",
                             f"models:/{LM_MODEL}@challenger", kind="llm")
    url = ctx.results["lm_url"] = serving.deploy_ready(ctx.settings, cfg, name=serving.LLM_APP_NAME,
                                                           route_prefix=f"/{serving.LLM_APP_NAME}")
    started, first, pieces = time.monotonic(), None, []
    with _lm_client(url) as client:
        raw = client.completions.with_raw_response.create(model=LM_MODEL, prompt=LM_PROMPTS[0], max_tokens=32,
                                                          temperature=0.8, seed=0, stream=True)
        for event in raw.parse():
            first = first if first is not None else time.monotonic() - started
            pieces.extend(choice.text for choice in event.choices)
    text = "".join(pieces)
    if not text:
        raise RuntimeError(f"the stream from {url} carried no text")
    return (f"router app (kind: llm): champion v{ctx.results['lm']} serves, challenger v{ctx.results['lm_v2']} "
            f"deployed at 0 %; streamed from {url}/v1/completions with the openai client "
            f"({raw.headers[HEADER_VARIANT]} v{raw.headers[HEADER_VERSION]}): first token after "
            f"{first * 1000:.0f} ms, {len(pieces)} events: {('async def ' + text)[:60]!r}")


class CompletionLoad:
    """Streamed completions with the ``openai`` client from a few threads, each request from one of
    ``LM_USERS`` sticky users, until stopped; counts which variant answered and what failed."""

    def __init__(self, url: str, threads: int = 3, pause_s: float = 0.05) -> None:
        self.url, self.pause_s = url, pause_s
        self.served: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, first: int) -> None:
        import openai

        from deployments.contracts import HEADER_VARIANT

        with _lm_client(self.url) as client:
            i = first
            while not self._stop.is_set():
                try:
                    raw = client.completions.with_raw_response.create(
                        model=LM_MODEL, prompt=LM_PROMPTS[i % len(LM_PROMPTS)], max_tokens=4, stream=True,
                        user=f"user-{i % LM_USERS}")
                    for _ in raw.parse():
                        pass
                    outcome, counter = raw.headers.get(HEADER_VARIANT, "?"), self.served
                except openai.APIError as exc:
                    outcome, counter = type(exc).__name__, self.failed
                with self._lock:
                    counter[outcome] += 1
                i += len(self._threads)
                self._stop.wait(self.pause_s)

    def start(self) -> CompletionLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> CompletionLoad:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self


def _ttft(analyses: list[dict[str, Any]], v1: str, v2: str) -> str:
    """What the gates saw: the last check that compared both versions' time to first token, and how many failed."""
    failed = sum(1 for a in analyses if a["status"] == "fail")
    both = [a for a in analyses if all((a["stats"].get(v) or {}).get("p50_ms") for v in ("baseline", "candidate"))]
    if not both:
        return f"{len(analyses)} checks, {failed} failed, none compared both versions"
    base, cand = both[-1]["stats"]["baseline"], both[-1]["stats"]["candidate"]
    return (f"last check with both: TTFT p50 v{v2} {cand['p50_ms']:.0f} ms vs v{v1} {base['p50_ms']:.0f} ms, "
            f"p99 {cand['p99_ms']:.0f} vs {base['p99_ms']:.0f} ms, errors {cand['errors']}/{cand['requests']}; "
            f"{failed} of {len(analyses)} checks failed")


def stage_lm_canary(ctx: DemoContext) -> str:
    """Canary v2 against v1 through the router app under streamed openai traffic, gated on TTFT and errors."""
    from cluster.cli.canary import AdminClient
    from deployments.contracts import HEADER_VERSION

    url, v1, v2 = ctx.results["lm_url"], ctx.results["lm"], ctx.results["lm_v2"]
    final, load, seconds, analyses = _rollout(ctx, AdminClient(ctx.settings, url), "examples/demo/canary_lm.yaml",
                                              CompletionLoad(url))
    champion = Registry(ctx.settings).by_alias(LM_MODEL, "champion").version
    with _lm_client(url) as client:
        serving = client.completions.with_raw_response.create(model=LM_MODEL, prompt=LM_PROMPTS[1],
                                                              max_tokens=1).headers[HEADER_VERSION]
    traffic = (f"{sum(load.served.values())} streamed completions ({dict(sorted(load.served.items()))}), "
               f"{sum(load.failed.values())} failed")
    reason = (final.get("decision") or {}).get("reason") or final.get("reason")
    if final["phase"] == "succeeded" and champion == v2 == serving:
        return (f"{_gate_passed(ctx, url)}; v{v2} promoted to 100 % in {seconds:.0f} s ({_ttft(analyses, v1, v2)}); "
                f"champion → v{champion}; v{serving} serves now; {traffic}")
    if final["phase"] == "rolled_back" and champion == v1 == serving:
        return f"v{v2} rolled back automatically after {seconds:.0f} s ({reason}); champion stays v{v1}, " \
               f"v{serving} serves; {traffic}"
    raise RuntimeError(f"LM rollout {final['rollout_id']} ended {final['phase']} ({reason}) but champion is "
                       f"v{champion} and v{serving} serves")


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
        ("train GPT v2: v1's run resumed for one more epoch, registered as challenger (Ray job)", stage_lm_train_v2),
        ("serve the GPT through the router app (OpenAI API, continuous batching) and stream a completion",
         stage_lm_serve),
        ("canary GPT v2 under streamed openai traffic: TTFT and error gates, then the champion alias moves",
         stage_lm_canary),
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
