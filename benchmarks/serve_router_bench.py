"""Router overhead: requests/s and p50/p99 through the router vs the same model deployment called directly.

One script, one machine, side by side: a private MLflow server and Ray instance, one
registered tiny model, five Serve apps with identical model replicas — ``direct`` (the
model deployment is the ingress), ``routed`` (router ingress → model deployment, 100 %
baseline, no rollout running) and ``hop`` (a bare pass-through ingress → model
deployment: what one extra Serve deployment hop costs by itself, so ``routed − hop`` is
the router's own code), ``colocated`` (the router with the model inside its replicas,
``colocate: true``: no hop) and ``routed-actor`` (``routed`` with Ray actor calls instead of
gRPC between router and model, ``model_calls: actor``). A load client runs in a separate process per run (so it does not
share the server's interpreter) and the paths alternate, repeated ``--repeats`` times;
the report gives medians over repeats.

    python benchmarks/serve_router_bench.py --repeats 5 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402
from benchmarks.serving_stack import ACTOR_CALLS, COLOCATED, FLOOR, serving_stack  # noqa: E402

ORDER = ("direct", FLOOR, "routed", COLOCATED, ACTOR_CALLS)


# ---------------------------------------------------------------- load client (separate process)
async def _load(url: str, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    import httpx

    from tests.serve.helpers import instance

    body = json.dumps({"instances": [instance(1)]}).encode()
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                if now >= measure_from:
                    if response.status_code == 200:
                        latencies.append((time.perf_counter() - now) * 1000.0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies_ms": latencies, "errors": errors, "duration_s": duration_s}


def run_client(url: str, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    """One measured run in a fresh client process."""
    out = subprocess.run(
        [sys.executable, __file__, "--client", url, "--concurrency", str(concurrency),
         "--duration", str(duration_s), "--warmup", str(warmup_s)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-max-size", type=int, default=32)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(_load(args.client, args.concurrency[0], args.duration, args.warmup))))
        return
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS}")

    with serving_stack(args.batch_max_size) as endpoints:
        model = endpoints.model
        report = Report("serve-router", f"tiny TabularMLP ({model}), 1 instance per request, "
                        f"{args.duration:g} s per run after {args.warmup:g} s warm-up, concurrency "
                        f"{args.concurrency}, {args.repeats} repeats alternating {'/'.join(ORDER)}; client in "
                        f"its own process; every replica (model, router, pass-through, colocated) 0.5 CPU; routed "
                        f"and hop call the model over gRPC")
        for concurrency in args.concurrency:
            for repeat in range(args.repeats):
                for path in ORDER:
                    result = run_client(endpoints.predict_url(path), concurrency, args.duration, args.warmup)
                    lat = summarize(result["latencies_ms"])
                    report.add(concurrency=concurrency, repeat=repeat, path=path,
                               rps=len(result["latencies_ms"]) / result["duration_s"], errors=result["errors"],
                               p50_ms=lat["p50"], p99_ms=lat["p99"])
                    print(f"c={concurrency} #{repeat} {path}: {report.rows[-1]['rps']:.1f} req/s "
                          f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms", flush=True)
        rows = _summary_rows(report.rows, args.concurrency)
        report.section("Results (medians over repeats)", report.table(rows))
        report.section("Targets", "Router overhead target: <= 1 ms added at p50 and >= 90 % of direct throughput. "
                       "Medians of per-run p50/p99/throughput; `added_p50_ms` = routed − direct, of which "
                       "`hop_added_p50_ms` (hop − direct) is Serve's extra deployment hop alone and "
                       "`router_code_p50_ms` (routed − hop) is the router's own work; `colocated_*` is the router "
                       "with the model in its own replicas (`colocate: true`), against the same direct path; "
                       "`actor_calls_*` is `routed` with Ray actor calls to the model instead of gRPC "
                       "(`model_calls: actor`).")
        out = report.write(" ".join(["python", "benchmarks/serve_router_bench.py", *sys.argv[1:]]))
        print(report.table(rows))
        print(f"report: {out}")


def _summary_rows(rows: list[dict], concurrencies: list[int]) -> list[dict]:
    out = []
    for c in concurrencies:
        med = {p: {k: statistics.median(r[k] for r in rows if r["concurrency"] == c and r["path"] == p)
                   for k in ("rps", "p50_ms", "p99_ms")} for p in ORDER}
        out.append({"concurrency": c, "direct_rps": med["direct"]["rps"], "routed_rps": med["routed"]["rps"],
                    "throughput_ratio": med["routed"]["rps"] / med["direct"]["rps"],
                    "hop_throughput_ratio": med[FLOOR]["rps"] / med["direct"]["rps"],
                    "direct_p50_ms": med["direct"]["p50_ms"], "routed_p50_ms": med["routed"]["p50_ms"],
                    "added_p50_ms": med["routed"]["p50_ms"] - med["direct"]["p50_ms"],
                    "hop_added_p50_ms": med[FLOOR]["p50_ms"] - med["direct"]["p50_ms"],
                    "router_code_p50_ms": med["routed"]["p50_ms"] - med[FLOOR]["p50_ms"],
                    "colocated_throughput_ratio": med[COLOCATED]["rps"] / med["direct"]["rps"],
                    "colocated_added_p50_ms": med[COLOCATED]["p50_ms"] - med["direct"]["p50_ms"],
                    "actor_calls_throughput_ratio": med[ACTOR_CALLS]["rps"] / med["direct"]["rps"],
                    "actor_calls_added_p50_ms": med[ACTOR_CALLS]["p50_ms"] - med["direct"]["p50_ms"],
                    "direct_p99_ms": med["direct"]["p99_ms"], "routed_p99_ms": med["routed"]["p99_ms"]})
    return out


if __name__ == "__main__":
    main()
