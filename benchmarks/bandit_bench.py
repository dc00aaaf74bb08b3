"""Bandit routing against a fixed 50/50 A/B test: traffic sent to the worse version and time to pick the winner.

Workload: a simulation that drives the real rollout code — :func:`deployments.rollout.state.transition`
in ``mode: bandit`` (Thompson sampling, :mod:`deployments.rollout.bandit`) with the health verdicts of
:func:`deployments.rollout.analysis.evaluate` over a :class:`~deployments.rollout.analysis.WindowLog`,
and the rewards the controller would pass (``outcomes["reward"]`` of the windows since the bandit's last
update). Each interval of 10 s serves ``--rate`` requests split by the rollout's own weights; each request
earns a 0/1 reward with its version's true rate (conversion), reported ``--delay`` intervals later
(feedback arrives after the response). No errors, same latency: health never decides here. Alias moves
succeed at once, so what is measured is the policy, not the plumbing.

Scenarios (true reward rates, baseline / candidate): ``candidate better`` 0.10 / 0.12, ``baseline better``
0.12 / 0.10, ``large effect`` 0.10 / 0.15, ``equal`` 0.10 / 0.10.

Two policies on the same horizon (``--intervals`` intervals) and the same seeds:

* ``bandit 0.95/100`` — this code, spec ``mode: bandit`` with its defaults: min_share 0.05,
  promote_threshold 0.95, min_samples_per_arm 100, max_duration_s = the horizon. Once it decides, all
  traffic goes to the version it picked (promoted candidate, or baseline kept) for the rest of the horizon;
* ``bandit 0.99/1000`` — the same with promote_threshold 0.99 and min_samples_per_arm 1000 (slower, fewer
  wrong picks);
* ``A/B 50/50`` — a fixed split for the whole horizon, then one two-proportion z test
  (:func:`deployments.rollout.stats.two_proportion`, alpha 0.05) on all rewards.

Reported per scenario and policy: how often the better version was picked (``equal``: how often a
winner was declared at all, a false one), requests and intervals to the decision, share of the
horizon's traffic sent to the worse version and the rewards lost against always serving the better
one (medians over seeds), and the bandit/A-B ratios of those medians.

    .venv/bin/python -m benchmarks.bandit_bench --seeds 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # `python benchmarks/bandit_bench.py` (make bench) as well as `-m`

from benchmarks.report import Report, percentile  # noqa: E402
from deployments.contracts import BASELINE, CANDIDATE, VariantWindow  # noqa: E402
from deployments.rollout.analysis import WindowLog, aggregate, evaluate  # noqa: E402
from deployments.rollout.spec import RolloutSpec, parse_spec  # noqa: E402
from deployments.rollout.state import Observation, Phase, start, transition  # noqa: E402
from deployments.rollout.stats import two_proportion  # noqa: E402

INTERVAL_S = 10.0
REWARD = "reward"
SCENARIOS = {                      # true reward rate (baseline, candidate)
    "candidate better": (0.10, 0.12),
    "baseline better": (0.12, 0.10),
    "large effect": (0.10, 0.15),
    "equal": (0.10, 0.10),
}


BANDITS = {"bandit 0.95/100": (0.95, 100), "bandit 0.99/1000": (0.99, 1000)}   # (promote_threshold, min samples)


def bench_spec(intervals: int, threshold: float, min_samples: int) -> RolloutSpec:
    return parse_spec({"model": "bench", "baseline": "1", "candidate": "2", "mode": "bandit",
                       "interval_s": INTERVAL_S, "failed_checks_before_rollback": 2,
                       "thresholds": {"max_error_rate": 0.05, "min_requests_per_check": 10},
                       "bandit": {"reward": REWARD, "min_share": 0.05, "promote_threshold": threshold,
                                  "min_samples_per_arm": min_samples, "max_duration_s": intervals * INTERVAL_S}})


@dataclass
class Run:
    picked: str | None        # BASELINE, CANDIDATE or None (no winner)
    decided_requests: int | None
    decided_intervals: int | None
    requests: dict[str, int]  # served per variant over the whole horizon


def bandit_run(rates: tuple[float, float], seed: int, intervals: int, rate: int, delay: int,
               config: tuple[float, int]) -> Run:
    rng = np.random.default_rng(seed)
    true = {BASELINE: rates[0], CANDIDATE: rates[1]}
    spec = bench_spec(intervals, *config)
    state, _ = start(spec, "1", "2", now=0.0, epoch=0, actor="bench", rollout_id=f"bench-{seed}")
    state, _ = transition(state, Observation(now=0.0))
    log, served = WindowLog(retention_s=1e9), {BASELINE: 0, CANDIDATE: 0}
    in_flight: list[list[VariantWindow]] = []     # rewards not yet reported, oldest first
    picked, decided_at = None, None
    for i in range(1, intervals + 1):
        now = i * INTERVAL_S
        counts = _split(rng, rate, state.traffic.weights)
        windows, rewards = [], []
        for v, n in counts.items():
            served[v] += n
            hits = int(rng.binomial(n, true[v])) if n else 0
            windows.append(VariantWindow(v, "2" if v == CANDIDATE else "1", n))   # no latency gates here
            rewards.append(VariantWindow(v, None, outcomes={REWARD: [1.0] * hits + [0.0] * (n - hits)}))
        in_flight.append(rewards)
        arrived = in_flight.pop(0) if len(in_flight) > delay else []
        log.add(now - INTERVAL_S / 2, "sim", windows + arrived)
        if state.phase != Phase.PROGRESSING:
            continue
        obs = {"verdict": evaluate(spec, aggregate(log.since(now - INTERVAL_S, now)),
                                   aggregate(log.since(state.step_started_at, now))),
               "step_requests": log.requests_since(state.step_started_at, CANDIDATE)}
        fresh = aggregate(log.since(state.bandit["counted_until"], now))     # what the controller passes
        obs["rewards"] = {v: s.outcomes.get(REWARD, []) for v, s in fresh.items()}
        state, _ = transition(state, Observation(now=now, **obs))
        if state.phase == Phase.PROMOTING:
            state, _ = transition(state, Observation(now=now, alias_result="ok"))
        if state.phase in (Phase.SUCCEEDED, Phase.CONCLUDED):
            picked = {"candidate_better": CANDIDATE, "promoted": CANDIDATE, "baseline_better": BASELINE}.get(
                state.decision["outcome"]) if state.decision else None
            if picked is not None:
                decided_at = i
    return Run(picked, decided_at * rate if decided_at else None, decided_at, served)


def ab_run(rates: tuple[float, float], seed: int, intervals: int, rate: int) -> Run:
    rng = np.random.default_rng(seed)
    n = intervals * rate
    n_c = int(rng.binomial(n, 0.5))
    n_b = n - n_c
    hits_b, hits_c = int(rng.binomial(n_b, rates[0])), int(rng.binomial(n_c, rates[1]))
    result = two_proportion(hits_b, n_b, hits_c, n_c, alpha=0.05)
    picked = {"candidate_better": CANDIDATE, "candidate_worse": BASELINE}.get(result.decision)
    return Run(picked, n if picked else None, intervals if picked else None, {BASELINE: n_b, CANDIDATE: n_c})


def _split(rng: np.random.Generator, n: int, weights: dict[str, float]) -> dict[str, int]:
    names = list(weights)
    p = np.array([weights[v] for v in names])
    return dict(zip(names, (int(c) for c in rng.multinomial(n, p / p.sum())), strict=True))


def summary(scenario: str, policy: str, rates: tuple[float, float], runs: list[Run]) -> dict:
    better = CANDIDATE if rates[1] > rates[0] else BASELINE if rates[0] > rates[1] else None
    worse = {CANDIDATE: BASELINE, BASELINE: CANDIDATE}.get(better) if better else None
    total = [sum(r.requests.values()) for r in runs]
    worse_share = [r.requests[worse] / t if worse else float("nan") for r, t in zip(runs, total, strict=True)]
    lost = [r.requests[worse] * abs(rates[0] - rates[1]) if worse else 0.0 for r in runs]
    decided = [r.decided_requests for r in runs if r.decided_requests is not None]
    decided_iv = [r.decided_intervals for r in runs if r.decided_intervals is not None]
    return {
        "scenario": scenario, "policy": policy, "seeds": len(runs),
        "picked the better": f"{sum(r.picked == better for r in runs) / len(runs):.0%}" if better else "-",
        "picked the worse": f"{sum(r.picked == worse for r in runs) / len(runs):.0%}" if worse else "-",
        "declared a winner": f"{sum(r.picked is not None for r in runs) / len(runs):.0%}",
        "requests to decision (median)": statistics.median(decided) if decided else "-",
        "requests to decision (p95)": percentile(decided, 95) if decided else "-",
        "intervals to decision (median)": statistics.median(decided_iv) if decided_iv else "-",
        "share to the worse (median)": statistics.median(worse_share) if worse else "-",
        "rewards lost (median)": statistics.median(lost) if worse else "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50, help="simulated rollouts per scenario and policy (>= 20)")
    parser.add_argument("--intervals", type=int, default=100, help="horizon: analysis intervals of 10 s")
    parser.add_argument("--rate", type=int, default=200, help="requests per interval")
    parser.add_argument("--delay", type=int, default=1, help="intervals until a request's reward is reported")
    args = parser.parse_args()
    if args.seeds < 20:
        parser.error("--seeds must be at least 20")
    horizon = args.intervals * args.rate
    report = Report("bandit_bench", f"simulated rollouts of {horizon} requests ({args.intervals} intervals of "
                                    f"{args.rate}), 0/1 rewards reported {args.delay} interval(s) late; "
                                    f"{args.seeds} seeds per scenario and policy; real state machine, bandit "
                                    f"policy and analysis code against a fixed 50/50 A/B two-proportion test")
    rows, ratios = [], []
    started = time.perf_counter()
    for scenario, rates in SCENARIOS.items():
        policies = {name: [bandit_run(rates, seed, args.intervals, args.rate, args.delay, config)
                           for seed in range(args.seeds)] for name, config in BANDITS.items()}
        policies["A/B 50/50"] = [ab_run(rates, seed, args.intervals, args.rate) for seed in range(args.seeds)]
        for policy, runs in policies.items():
            for seed, r in enumerate(runs):
                report.add(scenario=scenario, policy=policy, seed=seed, picked=r.picked or "",
                           decided_requests=r.decided_requests or "", baseline_requests=r.requests[BASELINE],
                           candidate_requests=r.requests[CANDIDATE])
            rows.append(summary(scenario, policy, rates, runs))
            print(rows[-1], flush=True)
        a = rows[-1]
        for b in rows[-len(policies):-1]:
            ratios.append({"scenario": scenario, "policy": b["policy"],
                           "share to the worse, bandit / A/B": _ratio(b["share to the worse (median)"],
                                                                      a["share to the worse (median)"]),
                           "rewards lost, bandit / A/B": _ratio(b["rewards lost (median)"],
                                                                a["rewards lost (median)"]),
                           "requests to decision, bandit / A/B": _ratio(b["requests to decision (median)"],
                                                                        a["requests to decision (median)"])})
    report.section("Results", report.table(rows))
    report.section("Ratios (medians)", report.table(ratios))
    report.section("Reading it", (
        "The A/B test decides only at the end of the horizon, by design; a bandit stops as soon as one "
        "version's P(best) reaches its threshold with its minimum rewards each, then serves the version it "
        "picked. 'Share to the worse' is over the whole horizon for both. In `equal` every declared winner is "
        "a false one (harmless to the reward, but not a fixed-alpha test: the bandit looks every interval). "
        "Health checks never fail here (no errors). Simulated time; the whole run took "
        f"{time.perf_counter() - started:.0f} s of CPU on this machine."))
    out = report.write(f"python -m benchmarks.bandit_bench --seeds {args.seeds} --intervals {args.intervals} "
                       f"--rate {args.rate} --delay {args.delay}")
    print(f"report: {out}")


def _ratio(a: object, b: object) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.2f}"


if __name__ == "__main__":
    main()
