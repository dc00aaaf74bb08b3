"""Throughput–latency curve of the serving endpoint, with and without the router, and where each saturates.

Open-loop load (``cluster.loadgen``: request ``i`` is due at ``i / rate``; latency counts from that
due time) at increasing offered rates, from a separate client process per run, against the two
paths of ``benchmarks.serving_stack``: ``direct`` (model deployment as ingress), ``routed``
(router → the same model deployment) and ``colocated`` (the router with the model inside its
replicas). Paths alternate within every repeat; a path stops
climbing once its throughput stops rising or its p99 / error rate blows up. Per rate and path the
report gives the medians over repeats of achieved throughput, p50/p95/p99 and error rate, the
saturation point (defined in the summary), a CSV of the curve and a PNG plot.

    python benchmarks/load_curve_bench.py --repeats 5 --duration 10
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402
from benchmarks.serving_stack import COLOCATED, PATHS, REPLICA_CPUS, Endpoints, serving_stack  # noqa: E402

CURVE_PATHS = (*PATHS, COLOCATED)   # direct, routed (separate replica sets), routed colocated

RATES = [10, 20, 40, 80, 120, 160, 200, 240, 320, 400]
MIN_ACHIEVED_SHARE = 0.95      # saturated below this share of the offered rate
MAX_ERROR_RATE = 0.01          # ... or above this error rate
BLOWN_ERROR_RATE = 0.05        # stop climbing: errors blew up
BLOWN_P99_FACTOR = 10.0        # stop climbing: p99 above this many times the bound
RISE_FACTOR = 1.02             # stop climbing: throughput rose less than 2 % over the best lower rate
RECORDS = 200
PLOT = "load_curve.png"
CURVE = "curve.csv"


@dataclass
class Bounds:
    """What 'not saturated' means for one (path, rate) median."""

    p99_ms: float

    def holds(self, point: dict[str, Any]) -> bool:
        return (point["achieved_rps"] >= MIN_ACHIEVED_SHARE * point["offered_rps"]
                and point["p99_ms"] <= self.p99_ms and point["error_rate"] <= MAX_ERROR_RATE)

    def blown(self, point: dict[str, Any], best_before: float) -> bool:
        return (point["error_rate"] > BLOWN_ERROR_RATE or point["p99_ms"] > BLOWN_P99_FACTOR * self.p99_ms
                or point["achieved_rps"] <= RISE_FACTOR * best_before)


# ---------------------------------------------------------------- one run: the load generator in its own process
def run_load(endpoints: Endpoints, path: str, records: Path, rate: float, duration_s: float, out: Path) -> dict:
    """``python -m cluster.loadgen`` against ``path`` at ``rate`` req/s; its LoadResult as a dict."""
    subprocess.run(
        [sys.executable, "-m", "cluster.loadgen", "--url", endpoints.base_urls[path], "--model", endpoints.model,
         "--records", str(records), "--rate", str(rate), "--duration", str(duration_s), "--out", str(out)],
        check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.read_text())


def measure(result: dict, rate: float, duration_s: float) -> dict[str, Any]:
    """Achieved throughput counts only answers inside the window (a backlog drained later is not throughput)."""
    in_window = sum(1 for t, _, status in result["timeline"] if status == 200 and t <= duration_s)
    lat = summarize(result["latencies_ms"])
    return {"offered_rps": rate, "sent": result["sent"], "ok": result["ok"], "achieved_rps": in_window / duration_s,
            "error_rate": result["failure_rate"], "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"]}


# ---------------------------------------------------------------- the curve
def median_point(rows: list[dict[str, Any]], path: str, rate: float) -> dict[str, Any]:
    runs = [r for r in rows if r["path"] == path and r["offered_rps"] == rate]
    keys = ("achieved_rps", "error_rate", "p50_ms", "p95_ms", "p99_ms")
    return {"path": path, "offered_rps": rate, "repeats": len(runs),
            **{k: statistics.median(r[k] for r in runs) for k in keys}}


def saturation(curve: list[dict[str, Any]], path: str, bounds: Bounds) -> dict[str, Any]:
    """Highest offered rate before the first one that breaks the bounds; the peak achieved throughput."""
    points = sorted((p for p in curve if p["path"] == path), key=lambda p: p["offered_rps"])
    held = None
    for point in points:
        if not bounds.holds(point):
            break
        held = point["offered_rps"]
    peak = max(points, key=lambda p: p["achieved_rps"])
    return {"path": path, "saturation_rps": held if held is not None else "below lowest rate",
            "peak_achieved_rps": peak["achieved_rps"], "at_offered_rps": peak["offered_rps"],
            "p99_at_peak_ms": peak["p99_ms"]}


def sweep(endpoints: Endpoints, args: argparse.Namespace, report: Report, work: Path) -> list[dict[str, Any]]:
    """Every rate, repeats × alternating paths; a path that blew up is not driven harder. Returns the medians."""
    records = work / "records.json"
    records.write_text(json.dumps(_records()))
    bounds = Bounds(args.p99_bound_ms)
    for path in CURVE_PATHS:   # warm every path (connections, replicas' first batches) before anything is measured
        run_load(endpoints, path, records, args.rates[0], args.warmup, work / "warmup.json")
    curve: list[dict[str, Any]] = []
    climbing = list(CURVE_PATHS)
    for rate in args.rates:
        if not climbing:
            break
        for repeat in range(args.repeats):
            for path in climbing:
                row = measure(run_load(endpoints, path, records, rate, args.duration, work / "run.json"),
                              rate, args.duration)
                report.add(path=path, repeat=repeat, **row)
                print(f"{rate:g} req/s #{repeat} {path}: {row['achieved_rps']:.1f} achieved, p50 {row['p50_ms']:.1f} "
                      f"p99 {row['p99_ms']:.1f} ms, errors {row['error_rate']:.2%}", flush=True)
        for path in list(climbing):
            point = median_point(report.rows, path, rate)
            best_before = max((p["achieved_rps"] for p in curve if p["path"] == path), default=0.0)
            curve.append(point)
            if bounds.blown(point, best_before):
                climbing.remove(path)
    return curve


def _records() -> list[dict[str, Any]]:
    from tests.serve.helpers import instance

    return [instance(i) for i in range(RECORDS)]


# ---------------------------------------------------------------- outputs
def write_curve(curve: list[dict[str, Any]], out: Path) -> None:
    with open(out / CURVE, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)


def plot(curve: list[dict[str, Any]], saturations: list[dict[str, Any]], bounds: Bounds, out: Path) -> None:
    """Left: achieved vs offered (the ideal is the diagonal). Right: p50/p95/p99 vs offered, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = sorted({p["offered_rps"] for p in curve})
    left.plot(rates, rates, color="grey", linestyle=":", label="offered = achieved")
    for color, path in zip(("tab:blue", "tab:orange", "tab:green"), CURVE_PATHS, strict=True):
        points = sorted((p for p in curve if p["path"] == path), key=lambda p: p["offered_rps"])
        offered = [p["offered_rps"] for p in points]
        left.plot(offered, [p["achieved_rps"] for p in points], marker="o", color=color, label=path)
        sat = next(s["saturation_rps"] for s in saturations if s["path"] == path)
        if isinstance(sat, (int, float)):
            left.axvline(sat, color=color, linestyle="--", alpha=0.5)
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            right.plot(offered, [p[f"{q}_ms"] for p in points], marker=".", linestyle=style, color=color,
                       label=f"{path} {q}")
    right.axhline(bounds.p99_ms, color="red", linewidth=0.8, label=f"p99 bound {bounds.p99_ms:g} ms")
    left.set(xlabel="offered (req/s)", ylabel="achieved (req/s)", title="Throughput (dashed: saturation point)")
    right.set(xlabel="offered (req/s)", ylabel="latency (ms)", yscale="log", title="Latency from due time")
    left.legend()
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / PLOT, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load per path before measuring")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES, help="offered rates, req/s, increasing")
    parser.add_argument("--p99-bound-ms", type=float, default=250.0, help="p99 bound of the saturation point")
    parser.add_argument("--batch-max-size", type=int, default=32)
    parser.add_argument("--out-dir", type=Path, help="write here instead of reports/<date>-load-curve/")
    args = parser.parse_args()
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS}")
    if args.rates != sorted(set(args.rates)):
        parser.error("--rates must strictly increase")

    bounds = Bounds(args.p99_bound_ms)
    with serving_stack(args.batch_max_size) as endpoints:
        report = Report("load-curve", _workload(endpoints, args), out_dir=args.out_dir)
        curve = sweep(endpoints, args, report, Path(tempfile.mkdtemp(prefix="load-curve-")))
    saturations = [saturation(curve, path, bounds) for path in CURVE_PATHS]
    report.section("Curve (medians over repeats)", report.table(curve))
    report.section("Saturation point", _definition(bounds) + "\n\n" + report.table(saturations))
    report.section("Plot", f"![throughput and latency against offered rate]({PLOT})\n\nThe curve as CSV: `{CURVE}`.")
    out = report.write(" ".join(["python", "benchmarks/load_curve_bench.py", *sys.argv[1:]]))
    write_curve(curve, out)
    plot(curve, saturations, bounds, out)
    print(report.table(saturations))
    print(f"report: {out}")


def _workload(endpoints: Endpoints, args: argparse.Namespace) -> str:
    return (f"tiny TabularMLP ({endpoints.model}), 1 instance per request; open-loop load (`cluster.loadgen`, "
            f"latency from each request's due time, 10 s client timeout) from its own process, {args.duration:g} s "
            f"per run after a {args.warmup:g} s warm-up per path; offered rates {[f'{r:g}' for r in args.rates]} "
            f"req/s, {args.repeats} repeats per rate alternating {' / '.join(CURVE_PATHS)}; model and router replicas "
            f"{REPLICA_CPUS} CPU each, batch max size {args.batch_max_size}; client and server share the machine")


def _definition(bounds: Bounds) -> str:
    return (f"A path is *saturated* at an offered rate when the median achieved throughput (answers within the "
            f"run's window) is below {MIN_ACHIEVED_SHARE:.0%} of the offered rate, or the median p99 exceeds "
            f"{bounds.p99_ms:g} ms, or the median error rate exceeds {MAX_ERROR_RATE:.0%}. The saturation point is "
            f"the highest offered rate below the first saturated one. A path stops climbing once its throughput "
            f"rises less than {RISE_FACTOR - 1:.0%} over its best lower rate, or its p99 exceeds "
            f"{BLOWN_P99_FACTOR:g}× the bound, or its error rate exceeds {BLOWN_ERROR_RATE:.0%}.")


if __name__ == "__main__":
    main()
