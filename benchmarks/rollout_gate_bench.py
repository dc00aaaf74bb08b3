"""Canary gates under noise: false rollbacks of a healthy candidate, detection time of bad ones.

Workload: a simulation that drives the real rollout code, :func:`deployments.rollout.state.transition`
and :func:`deployments.rollout.analysis.evaluate` over a :class:`~deployments.rollout.analysis.WindowLog`,
with synthetic request streams: 20 req/s split by the rollout's own weights, each request a
5xx with the variant's error rate and a log-normal latency (median 20 ms). The controller's
clock advances one second at a time; alias moves and router acknowledgements succeed at once,
so what is measured is the gate, not the plumbing (the Serve suites cover that).

Scenarios (the baseline always fails 1 % of requests):

* ``healthy`` — candidate as the baseline (1 % errors, same latency): every rollback is a false one;
* ``errors 5 %`` / ``errors 20 %`` — candidate 5xx rate from the first request;
* ``latency +50 %`` — candidate 1.5x slower, same error rate.

Two gates side by side on the same streams (same seeds):

* ``rayline`` — this code: the candidate against the baseline over the same interval and over its
  whole step at the spec's default one-sided confidence (99 %): Wilson / Newcombe bounds for errors,
  Mann–Whitney for a median latency ratio > 1.2; ``failed_checks_before_rollback`` consecutive
  failures; a step advances only once the candidate's error rate is shown below 5 % (Wilson upper bound);
* ``fixed threshold`` — the previous gate: the candidate's point error rate > 5 % and p99 > 1.2x
  the baseline's p99 fail a check, failed checks accumulate over a step (not reset by a pass).

Spec: steps 10/25/50/100 %, ``interval_s`` 10, ``min_requests`` 50 per step, 10 requests per
check, 2 failed checks roll back. Reported per scenario and gate: outcome rates, time from
start to the decision (median, p95) and how many candidate requests failed before it.

    .venv/bin/python -m benchmarks.rollout_gate_bench --trials 50
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # `python benchmarks/rollout_gate_bench.py` (make bench) as well as `-m`

from benchmarks.report import Report, percentile, summarize  # noqa: E402
from deployments.contracts import BASELINE, CANDIDATE, VariantWindow  # noqa: E402
from deployments.rollout.analysis import Check, Verdict, WindowLog, aggregate, evaluate  # noqa: E402
from deployments.rollout.spec import RolloutSpec, parse_spec  # noqa: E402
from deployments.rollout.state import TERMINAL, Observation, Phase, start, transition  # noqa: E402

RATE = 20                 # requests per second
BASE_ERROR = 0.01
MEDIAN_MS = 20.0
MAX_S = 900               # a rollout still undecided after this is "undecided"

SCENARIOS = {             # candidate (error rate, latency factor)
    "healthy": (BASE_ERROR, 1.0),
    "errors 5 %": (0.05, 1.0),
    "errors 20 %": (0.20, 1.0),
    "latency +50 %": (BASE_ERROR, 1.5),
}


def bench_spec() -> RolloutSpec:
    return parse_spec({"model": "bench", "baseline": "1", "candidate": "2", "steps": [10, 25, 50, 100],
                       "interval_s": 10, "min_requests": 50, "failed_checks_before_rollback": 2,
                       "thresholds": {"max_error_rate": 0.05, "max_latency_ratio_vs_baseline": 1.2,
                                      "min_requests_per_check": 10}})


def legacy_evaluate(spec: RolloutSpec, windows: list[VariantWindow]) -> Verdict:
    """The gate this issue replaced: point estimates against fixed limits, p99 ratio for latency."""
    stats = aggregate(windows)
    cand, base = stats.get(CANDIDATE), stats.get(BASELINE)
    if cand is None or cand.requests < spec.thresholds.min_requests_per_check:
        return Verdict("insufficient", [], stats)
    checks = [Check("error_rate", "fail" if cand.error_rate > 0.05 else "pass")]
    if base is not None and base.requests >= spec.thresholds.min_requests_per_check and cand.p99_ms and base.p99_ms:
        checks.append(Check("p99_ratio", "fail" if cand.p99_ms / base.p99_ms > 1.2 else "pass"))
    return Verdict("fail" if any(c.status == "fail" for c in checks) else "pass", checks, stats)


@dataclass
class Outcome:
    outcome: str              # promoted | rolled_back | undecided
    decided_s: float
    candidate_requests: int
    candidate_failures: int


def one_rollout(gate: str, cand_error: float, cand_slow: float, seed: int) -> Outcome:
    rng = random.Random(seed)
    spec = bench_spec()
    state, _ = start(spec, "1", "2", now=0.0, epoch=0, actor="bench")
    log = WindowLog()
    last_analysis, cand_requests, cand_failures = 0.0, 0, 0
    for second in range(1, MAX_S + 1):
        now = float(second)
        counts: dict[str, list] = {}
        for _ in range(RATE):
            weights = state.traffic.weights
            variant = CANDIDATE if rng.random() < weights.get(CANDIDATE, 0.0) else BASELINE
            error, slow = (cand_error, cand_slow) if variant == CANDIDATE else (BASE_ERROR, 1.0)
            failed = rng.random() < error
            row = counts.setdefault(variant, [0, 0, []])
            row[0] += 1
            row[1] += failed
            row[2].append(MEDIAN_MS * slow * rng.lognormvariate(0.0, 0.5))
            if variant == CANDIDATE:
                cand_requests += 1
                cand_failures += failed
        log.add(now, "sim", [VariantWindow(v, "2" if v == CANDIDATE else "1", n, 0, e, lat)
                             for v, (n, e, lat) in counts.items()])
        obs: dict = {"traffic_settled": True}
        if state.phase == Phase.PROGRESSING and now - last_analysis >= spec.interval_s:
            last_analysis = now
            interval = log.since(max(now - spec.interval_s, state.step_started_at))
            verdict = (evaluate(spec, aggregate(interval), aggregate(log.since(state.step_started_at)))
                       if gate == "rayline" else legacy_evaluate(spec, interval))
            obs.update(verdict=verdict, step_requests=log.requests_since(state.step_started_at, CANDIDATE))
        if state.phase == Phase.PROMOTING:
            obs["alias_result"] = "ok"
        before = state
        state, _ = transition(state, Observation(now=now, **obs))
        if gate == "fixed threshold" and state.phase == before.phase == Phase.PROGRESSING \
                and state.step_index == before.step_index:
            state.failed_checks = max(state.failed_checks, before.failed_checks)   # accumulated over the step
        if state.phase in TERMINAL or state.phase == Phase.ROLLING_BACK:
            outcome = "promoted" if state.phase == Phase.SUCCEEDED else "rolled_back"
            return Outcome(outcome, now, cand_requests, cand_failures)
    return Outcome("undecided", float(MAX_S), cand_requests, cand_failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="rollouts per scenario and gate (>= 20)")
    args = parser.parse_args()
    if args.trials < 20:
        parser.error("--trials must be at least 20")
    report = Report("rollout_gate_bench", f"simulated canary at {RATE} req/s, steps 10/25/50/100 %, 10 s "
                                          f"interval, baseline {BASE_ERROR:.0%} errors; {args.trials} trials per "
                                          f"scenario and gate; real state machine and analysis code")
    rows = []
    started = time.perf_counter()
    for scenario, (error, slow) in SCENARIOS.items():
        for gate in ("rayline", "fixed threshold"):
            results = [one_rollout(gate, error, slow, seed) for seed in range(args.trials)]
            for i, r in enumerate(results):
                report.add(scenario=scenario, gate=gate, trial=i, **r.__dict__)
            decided = [r.decided_s for r in results if r.outcome == "rolled_back"]
            promoted = [r.decided_s for r in results if r.outcome == "promoted"]
            row = {"scenario": scenario, "gate": gate, "trials": len(results),
                   "rolled back": f"{sum(r.outcome == 'rolled_back' for r in results) / len(results):.0%}",
                   "promoted": f"{sum(r.outcome == 'promoted' for r in results) / len(results):.0%}",
                   "undecided": sum(r.outcome == "undecided" for r in results),
                   "promoted after s (median)": summarize(promoted)["median"] if promoted else "-",
                   "rollback after s (median)": summarize(decided)["median"] if decided else "-",
                   "p95": percentile(decided, 95) if decided else "-",
                   "failed candidate requests (median)": summarize(
                       [float(r.candidate_failures) for r in results])["median"]}
            rows.append(row)
            print(row, flush=True)
    report.section("Results", report.table(rows))
    report.section("Reading it", "For `healthy` every rollback is false (the candidate is the baseline's "
                   "equal); for the others a promotion is a miss. Times are from the start of the rollout "
                   "(first step at 10 %). Simulated time; the whole run took "
                   f"{time.perf_counter() - started:.0f} s of CPU on this machine.")
    out = report.write(f"python -m benchmarks.rollout_gate_bench --trials {args.trials}")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
