"""LLM serving: output tokens/s and time to first token, the deployment vs one-at-a-time ``generate``.

One script, one machine, side by side, same model, same prompts, same ``max_tokens``, greedy:

- (a) ``deployment``: ``deployments.llm.server`` on Ray Serve (private MLflow + Ray), the tiny
  GPT-2 registered and served from ``models:/NAME@champion``; ``concurrency`` clients each stream
  ``/v1/completions`` (server-sent events, so the first token's arrival is measured) over HTTP,
  closed loop, one replica whose engine decodes up to ``--max-active`` sequences together, with
  ``--torch-threads`` (1: Ray's own setting for a 1-CPU replica; 2 threads measured slower, their
  OpenMP threads contend with the proxy and the clients on 2 cores) and ``--stream-interval`` tokens
  per streamed event after the first (each event is one Serve item, replica → proxy → client, whose
  CPU cost per item exceeds a decode step's per row; 1 streams every token; unset: the deployment's
  default, adaptive: every token while few sequences decode, up to 8 per event at 16), in ``--dtype``
  (the deployment's ``dtype``: auto, its default, the checkpoint's float32 here, or bfloat16, its throughput
  setting on CPUs with native bfloat16).
- (b) ``baseline``: the same files loaded in this process with ``transformers`` and served one
  request at a time with ``model.generate`` (a streamer records the first token), with the torch
  thread count (1 or all cores) and model (float32, ``--dtype``, or ``--dtype`` with the deployment's float32 CPU
  attention) that were fastest in a warm-up run, so the
  baseline gets its best (one request at a time, float32 wins on CPUs: half precision pays off on batches). With
  ``concurrency`` closed-loop clients in front of a one-at-a-time server, request ``j`` arrives
  when request ``j - concurrency`` finished, so its TTFT includes its wait in the queue.
- (c) ``--router``: the same streaming client against the router app (``kind: llm``, this model as its
  one variant, deployed here beside the deployment), or ``--router-url`` for a router already running.
  ``--router-topology`` picks the router apps: ``separate`` (row ``router``: router replica → the variant's
  own deployment, one more Serve hop per request and per streamed piece, by value over gRPC),
  ``separate-actor`` (row ``router-actor``: the same with ``model_calls: actor``, Ray actor calls by
  reference) and ``colocated`` (row ``router-colocated``: ``colocate: true``, the variant's engine inside the
  router replica, streamed in-process: the deployment's hop count). Each gets the deployment's CPU and limits.
  The router app's replicas run user code on Serve's main event loop (``replica_env``'s default); the
  deployment row does not, so ``colocated-default-env`` (row ``router-colocated-default-env``) is the colocated
  router with Serve's default env, the deployment's: the same hops and threads, only the router's code added.

Each repeat runs every concurrency for every path in turn; ``requests`` per run is ``max(MIN_REQUESTS (40),
--requests-per-client × concurrency)``: 8 per client by default (2 before 2026-11-30 evening: a run of 16
clients was then two synchronized waves of 16, each paying its ramp through the proxy, ~1 s in all, and a
run's TTFT p50 came from 32 requests; the one-at-a-time baseline's tokens/s does not depend on it).
tokens/s = completion tokens / wall time of the run; TTFT p50/p99 over
the run's requests; the report gives medians over repeats. The HTTP paths' order rotates from repeat to repeat,
with the baseline after the first of them (:func:`path_order`): a fixed order ran the router rows right after
the in-process baseline every time, and whichever path ran there was measured slower. A router row's TTFT change
is also given paired (``_paired``): the median over repeats of its p50 against the deployment's p50 of the same
repeat, which cancels the load drifting between repeats; the deployment's speedup too (``speedup_paired``: the
median of each repeat's deployment / baseline tokens/s), and the 4x verdict needs both. The model: GPT-2, ``--layers`` ×
``--dims``, byte-level BPE, trained for a few steps on generated sentences (``tests.serve.llm_helpers``).

``--router-rounds N`` adds, after the repeats, N rounds of the deployment and each router row back to back at
``--rounds-concurrency`` (16), 512 requests per run by default, and reports the median of the rounds' TTFT p50 ratios
with a 95 % confidence interval (:func:`benchmarks.report.median_ci`): the router's ≤ 5 % target is called shown only
when the whole interval is at or under it. Five repeats cannot decide it here: a run's p50 scatters more than that.

``--ingress``: Serve's HTTP ingress for the whole run, Serve's Python proxy (the default) or Ray's HAProxy
(``cluster.serve_ingress``; one cluster has one, so the two are compared in two runs).

    python benchmarks/llm_serve_bench.py [--repeats 5] [--concurrency 1 4 16 32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import MIN_REPEATS, Report, median_ci, percentile  # noqa: E402

DEPLOYMENT, BASELINE, ROUTER = "deployment", "baseline", "router"
ROUTER_PATHS = {"separate": ROUTER, "separate-actor": f"{ROUTER}-actor", "colocated": f"{ROUTER}-colocated",
                "colocated-default-env": f"{ROUTER}-colocated-default-env"}


# At least this many requests per run: at concurrency 1 a run of 8 gave a TTFT p50 whose router/deployment ratio
# scattered from repeat to repeat with sigma ~0.17 (a median of 5 repeats then +-9 %: it decided a 5 % target by
# chance); with 40, sigma ~0.07 (measured 2026-12-01). About 5 s more per path and repeat at concurrency 1.
MIN_REQUESTS = 40


MIN_ROUNDS = 6   # the fewest paired runs whose median has a 95 % confidence interval (benchmarks.report.median_ci)


def requests_for(concurrency: int, per_client: int = 2) -> int:
    return max(MIN_REQUESTS, per_client * concurrency)


async def _stream_one(client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(TTFT s, completion tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - started), tokens


async def _http_run(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                    per_client: int = 2) -> dict:
    import httpx

    todo = list(range(requests_for(concurrency, per_client)))
    ttfts: list[float] = []
    tokens = 0

    async def client_loop(client) -> None:
        nonlocal tokens
        while todo:
            i = todo.pop()
            ttft, n = await _stream_one(client, url, model, prompts[i % len(prompts)], max_tokens)
            ttfts.append(ttft)
            tokens += n

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"ttfts": ttfts, "tokens": tokens, "wall": wall}


def _baseline_run(model, tokenizer, prompts: list[str], concurrency: int, max_tokens: int,
                  per_client: int = 2) -> dict:
    """One request at a time with ``generate``; closed-loop arrivals as described in the module docstring."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.at = 0, None

        def put(self, value) -> None:   # first call: the prompt; second: the first generated token
            self.calls += 1
            if self.calls == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    n = requests_for(concurrency, per_client)
    finished: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for j in range(n):
        arrival = started if j < concurrency else finished[j - concurrency]
        ids = tokenizer(prompts[j % len(prompts)], add_special_tokens=False, return_tensors="pt")["input_ids"]
        streamer = FirstToken()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, streamer=streamer)
        finished.append(time.perf_counter())
        ttfts.append((streamer.at or finished[-1]) - arrival)
        tokens += out.shape[1] - ids.shape[1]
    return {"ttfts": ttfts, "tokens": tokens, "wall": time.perf_counter() - started}


def _fastest_setup(models: dict[str, Any], tokenizer, prompts: list[str], max_tokens: int) -> tuple[int, str]:
    """The baseline's torch threads (1 or every core) and model (float32, the deployment's dtype, and that dtype with
    the deployment's float32 attention, :mod:`deployments.llm.cpu_attention`), whichever ``generate`` ran fastest
    (best of 2 runs each): one request at a time, half precision is slower on CPUs (measured 2026-12-01: a 256-wide
    bfloat16 linear layer at one row takes twice float32's time), so the baseline is not handicapped by the
    deployment's choice, nor denied its attention."""
    import torch

    speed = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        for dtype, model in models.items():
            speed[threads, dtype] = max(_tokens_per_s(_baseline_run(model, tokenizer, prompts, 2, max_tokens))
                                        for _ in range(2))
    best = max(speed, key=speed.get)
    torch.set_num_threads(best[0])
    print("baseline warm-up tok/s by (torch threads, dtype):", {k: round(v) for k, v in speed.items()}, "->", best)
    return best


def _tokens_per_s(result: dict) -> float:
    return result["tokens"] / result["wall"]


def _deploy(settings, folder: Path, port: int, max_active: int, torch_threads: int,
            stream_interval: int | None, dtype: str) -> tuple[str, str]:
    from ray import serve

    from deployments.llm.server import LLMServeConfig, build
    from tests.serve.llm_helpers import register_lm

    name = "bench-lm"
    register_lm(settings, name, folder)
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    cfg = LLMServeConfig(model=f"models:/{name}@champion", tracking_uri=str(settings.mlflow_tracking_uri),
                         num_cpus=1, max_active=max_active, max_waiting=256, torch_threads=torch_threads,
                         stream_interval=stream_interval, dtype=dtype)
    serve.run(build(cfg), name="llm", route_prefix="/llm")
    return f"http://127.0.0.1:{port}/llm", name


def _deploy_router(settings, name: str, port: int, max_active: int, torch_threads: int, stream_interval: int | None,
                   dtype: str, topology: str) -> str:
    """Row (c): a router app (``kind: llm``, the registered model as its only variant, no controller) beside
    the deployment on the same Serve, in ``topology``; the same replica size and engine limits as the deployment's."""
    from ray import serve

    from deployments.app import build
    from deployments.serve_config import parse_config

    cfg = parse_config({"model_name": name, "kind": "llm", "baseline": f"models:/{name}@champion",
                        "tracking_uri": str(settings.mlflow_tracking_uri), "state_dir": str(settings.state_dir),
                        "controller": False, "num_cpus": 1, "router_num_cpus": 0.25,
                        "colocate": topology.startswith("colocated"),
                        "model_calls": "actor" if topology == "separate-actor" else "grpc",
                        **({"replica_env": {}} if topology.endswith("default-env") else {}),
                        "llm": {"max_active": max_active, "max_waiting": 256, "torch_threads": torch_threads,
                                "stream_interval": stream_interval, "dtype": dtype}})
    app = ROUTER_PATHS[topology]
    serve.run(build(cfg), name=app, route_prefix=f"/{app}")
    return f"http://127.0.0.1:{port}/{app}"


def path_order(http_paths: list[str], repeat: int) -> list[str]:
    """One repeat's order: the HTTP paths rotated by ``repeat``, the baseline after the first of them."""
    k = repeat % len(http_paths)
    rotated = http_paths[k:] + http_paths[:k]
    return [rotated[0], BASELINE, *rotated[1:]]


def _row(path: str, concurrency: int, repeat: int | None, result: dict) -> dict:
    return {"path": path, "concurrency": concurrency, "repeat": repeat, "requests": len(result["ttfts"]),
            "tokens": result["tokens"], "wall_s": result["wall"], "tokens_per_s": _tokens_per_s(result),
            "ttft_p50_ms": 1000 * percentile(result["ttfts"], 50),
            "ttft_p99_ms": 1000 * percentile(result["ttfts"], 99)}


def _paired_ratios(rows: list[dict], path: str, concurrency: int, key: str = "ttft_p50_ms",
                   over: str = DEPLOYMENT, by: str = "repeat") -> list[float]:
    """Per repeat (``by``: or per round): ``path``'s ``key`` / ``over``'s ``key`` at ``concurrency`` in the same repeat
    (by default the TTFT p50 against the deployment's)."""
    value = {(r["path"], r[by]): r[key] for r in rows if r["concurrency"] == concurrency and r.get(by) is not None}
    return [value[(path, k)] / value[(over, k)] for (p, k) in value if p == path and (over, k) in value]


def _summary(rows: list[dict], paths: list[str], concurrencies: list[int]) -> list[dict]:
    out = []
    for c in concurrencies:
        med = {p: {k: statistics.median(r[k] for r in rows if r["path"] == p and r["concurrency"] == c)
                   for k in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms")} for p in paths}
        row = {"concurrency": c}
        for p in paths:
            row.update({f"{p}_tok_s": med[p]["tokens_per_s"], f"{p}_ttft_p50_ms": med[p]["ttft_p50_ms"],
                        f"{p}_ttft_p99_ms": med[p]["ttft_p99_ms"]})
        row["speedup"] = med[DEPLOYMENT]["tokens_per_s"] / med[BASELINE]["tokens_per_s"]
        # the median of each repeat's own ratio: the baseline drifts between repeats (610-1059 tok/s at 16 in one day)
        row["speedup_paired"] = statistics.median(_paired_ratios(rows, DEPLOYMENT, c, "tokens_per_s", BASELINE))
        for p in paths:
            if p.startswith(ROUTER):
                row[f"{p}_ttft_p50_added"] = med[p]["ttft_p50_ms"] / med[DEPLOYMENT]["ttft_p50_ms"] - 1
                row[f"{p}_ttft_p50_added_paired"] = statistics.median(_paired_ratios(rows, p, c)) - 1
                row[f"{p}_tok_s_ratio"] = med[p]["tokens_per_s"] / med[DEPLOYMENT]["tokens_per_s"]
        out.append(row)
    return out


def _router_rounds(targets: dict[str, str], routers: list[str], model: str, prompts: list[str], concurrency: int,
                   max_tokens: int, per_client: int, rounds: int, report: Report) -> list[dict]:
    """``--router-rounds``: ``rounds`` rounds at ``concurrency``, the deployment and each router row back to back, the
    order reversed every other round; per router row the median over rounds of its TTFT p50 / the deployment's, with
    a 95 % confidence interval of that median. A run's p50 scattered ~13 % from run to run (128 requests at 16, behind
    HAProxy, 2026-12-01) and the two paths' runs do not move together, so five repeats put a ±10 % error on the
    router's added TTFT: more than the 5 % target. The rounds' rows go to metrics.csv with their ``round``."""
    for i in range(rounds):
        order = [DEPLOYMENT, *routers] if i % 2 == 0 else [*reversed(routers), DEPLOYMENT]
        for path in order:
            result = asyncio.run(_http_run(targets[path], model, prompts, concurrency, max_tokens, per_client))
            report.add(**_row(path, concurrency, None, result), round=i)   # repeat: empty in metrics.csv
        print(f"round {i} c={concurrency}: " + ", ".join(f"{r['path']} {r['ttft_p50_ms']:.1f} ms"
                                                         for r in report.rows[-len(order):]), flush=True)
    out = []
    for p in routers:
        r = _paired_ratios(report.rows, p, concurrency, by="round")
        low, high = median_ci(r)
        out.append({"path": p, "concurrency": concurrency, "rounds": rounds, "requests_per_run": requests_for(
            concurrency, per_client), "ttft_p50_added": statistics.median(r) - 1, "ci95_low": low - 1,
            "ci95_high": high - 1})
    return out


def _rounds_verdict(row: dict) -> str:
    """The 5 % target read off a rounds row: shown only when the whole 95 % interval is at or under it."""
    where = (f"{row['path']} c={row['concurrency']}: {row['ttft_p50_added']:+.1%} over {row['rounds']} rounds "
             f"(95 % CI {row['ci95_low']:+.1%} to {row['ci95_high']:+.1%})")
    if row["ci95_high"] <= 0.05:
        return f"{where}: <= 5 % shown"
    if row["ci95_low"] > 0.05:
        return f"{where}: more than 5 %"
    return f"{where}: not resolved at this precision"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=8,
                        help=f"closed-loop requests per client in a run (at least {MIN_REQUESTS} per run in all)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--max-active", type=int, default=32, help="the engine's decode batch limit")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in the replica's engine")
    parser.add_argument("--stream-interval", type=int, default=None,
                        help="the deployment's tokens per streamed event after the first (1: every token; "
                             "unset: the deployment's default, adaptive to the batch)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="the deployment's and router's weights/KV cache precision (llm dtype; auto: the "
                             "checkpoint's, float32 here); the baseline runs the faster of float32 and this")
    parser.add_argument("--router-url", help="row (c): the router's base URL serving /v1/completions for the model")
    parser.add_argument("--router", action="store_true", help="row (c): deploy the router app (kind: llm) here")
    parser.add_argument("--router-topology", nargs="+", choices=sorted(ROUTER_PATHS), default=["separate"],
                        help="with --router: which router apps to deploy, one row each")
    parser.add_argument("--router-rounds", type=int, default=0,
                        help="with --router: after the repeats, this many rounds of the deployment and the router "
                             "rows back to back at --rounds-concurrency, for a confidence interval of the router's "
                             "added TTFT p50 (30 rounds of 512 requests at 16: ~12 min)")
    parser.add_argument("--rounds-concurrency", type=int, default=16)
    parser.add_argument("--rounds-per-client", type=int, default=32, help="requests per client in a round's runs")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="proxy",
                        help="Serve's HTTP ingress (cluster.serve_ingress): Serve's proxy (default) or HAProxy")
    args = parser.parse_args()
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS}")
    if args.router_rounds and (args.router_rounds < MIN_ROUNDS or not (args.router or args.router_url)):
        parser.error(f"--router-rounds needs --router or --router-url and at least {MIN_ROUNDS} rounds (fewer "
                     "cannot give a 95 % confidence interval of a median)")

    import ray
    from ray import serve
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.serving_stack import start_stack
    from cluster.processes import free_port, session_members, terminate
    from deployments.llm import cpu_attention
    from tests.serve.llm_helpers import PROMPTS, TinyLM, build_tiny_lm, sentences

    work = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    spec = TinyLM(layers=args.layers, dims=args.dims, context=512, steps=args.train_steps)
    folder = build_tiny_lm(work / "model", spec)
    prompts = [*PROMPTS, *(" ".join(s.split()[:4]) for s in sentences(26, seed=1))]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings, mlflow_proc = start_stack(work / "stack", args.ingress)
    try:
        port = free_port()
        url, name = _deploy(settings, folder, port, args.max_active, args.torch_threads, args.stream_interval,
                            args.dtype)
        routers = {ROUTER: args.router_url} if args.router_url else {
            ROUTER_PATHS[t]: _deploy_router(settings, name, port, args.max_active, args.torch_threads,
                                            args.stream_interval, args.dtype, t)
            for t in (args.router_topology if args.router else [])}
        targets = {DEPLOYMENT: url, **routers}
        paths = [DEPLOYMENT, BASELINE, *routers]
        http_paths = [DEPLOYMENT, *routers]
        for target in targets.values():                                                 # warm-up
            asyncio.run(_http_run(target, name, prompts, 2, args.max_tokens))
        models = {"float32": model}   # the checkpoint's dtype ("auto")
        if args.dtype not in models and args.dtype != "auto":
            models[args.dtype] = AutoModelForCausalLM.from_pretrained(folder, dtype=args.dtype).eval()
            half = AutoModelForCausalLM.from_pretrained(folder, dtype=args.dtype).eval()
            if cpu_attention.use(half):   # the deployment's attention for half precision on CPU, offered too
                models[f"{args.dtype}+{cpu_attention.NAME}"] = half
        baseline_threads, baseline_dtype = _fastest_setup(models, tokenizer, prompts, args.max_tokens)
        model = models[baseline_dtype]
        report = Report("llm-serve", f"GPT-2 {args.layers}x{args.dims} (context 512, vocab {spec.vocab}), "
                        f"{len(prompts)} prompts, max_tokens {args.max_tokens}, greedy; requests per run "
                        f"max({MIN_REQUESTS}, {args.requests_per_client} x concurrency); {args.repeats} repeats, "
                        f"path order rotating; Serve ingress {args.ingress}; replica 1 CPU, "
                        f"engine max_active {args.max_active}, stream_interval {args.stream_interval or 'adaptive'}, "
                        f"dtype {args.dtype}, torch threads {args.torch_threads} in the replica's engine; "
                        f"{baseline_threads} torch threads and {baseline_dtype} in the baseline (the fastest of 1 and "
                        f"all cores, float32, {args.dtype} and {args.dtype} with float32 attention, at warm-up); "
                        f"the HTTP client runs on the same cores as the server")
        load_before = os.getloadavg()
        for repeat in range(args.repeats):
            for c in args.concurrency:
                for path in path_order(http_paths, repeat):
                    if path == BASELINE:
                        result = _baseline_run(model, tokenizer, prompts, c, args.max_tokens, args.requests_per_client)
                    else:
                        result = asyncio.run(_http_run(targets[path], name, prompts, c, args.max_tokens,
                                                                  args.requests_per_client))
                    report.add(**_row(path, c, repeat, result))
                    r = report.rows[-1]
                    print(f"#{repeat} c={c} {path}: {r['tokens_per_s']:.0f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} "
                          f"ms p99 {r['ttft_p99_ms']:.0f} ms ({r['tokens']} tokens)", flush=True)
        rows = _summary(report.rows, paths, args.concurrency)
        rounds = _router_rounds(targets, list(routers), name, prompts, args.rounds_concurrency, args.max_tokens,
                                args.rounds_per_client, args.router_rounds, report) if args.router_rounds else []
        at16 = next((r for r in rows if r["concurrency"] == 16), None)
        met = at16 is not None and min(at16["speedup"], at16["speedup_paired"]) >= 4   # both ways of reading it
        verdict = "not measured (16 not among --concurrency)" if at16 is None else (
            f"{at16['speedup']:.2f}x at concurrency 16 (paired, the median of each repeat's ratio: "
            f"{at16['speedup_paired']:.2f}x): target {'met' if met else 'NOT met'}")
        report.section("Results (medians over repeats)", report.table(rows))
        if rounds:
            report.section("The router's added TTFT p50, in rounds", report.table(rounds) + "\n\n" +
                           "\n".join(f"- {_rounds_verdict(r)}" for r in rounds))
        added = "; ".join(f"{p} c={r['concurrency']}: {r[f'{p}_ttft_p50_added']:+.1%} "
                          f"(paired {r[f'{p}_ttft_p50_added_paired']:+.1%})"
                          for p in routers for r in rows)
        in_rounds = "".join(f"; in rounds, {_rounds_verdict(r)}" for r in rounds)
        report.section("Target", f"deployment >= 4x the baseline's output tokens/s at concurrency 16 on 2 CPU cores: "
                                 f"{verdict}. The router adds <= 5 % to TTFT p50: "
                                 f"{added or 'not measured (no --router)'}{in_rounds}. Load average before: "
                                 f"{load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f} (the machine is shared; "
                                 f"figures are noisy).")
        out = report.write(" ".join(["python", "benchmarks/llm_serve_bench.py", *sys.argv[1:]]))
        print(report.table(rows))
        print(f"report: {out}")
    finally:
        serve.shutdown()
        ray.shutdown()
        terminate(session_members(mlflow_proc.pid), grace_s=5)


if __name__ == "__main__":
    main()
