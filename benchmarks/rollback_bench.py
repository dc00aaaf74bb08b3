"""Rollback speed: time from a canary starting to fail to 0 % of traffic on it.

Workload: the real ``RolloutController`` Serve deployment on a local Ray, a real MLflow
server for version resolution, and a router loop in this process that does what
``deployments.router`` does on the control path: polls ``traffic()`` every 0.2 s, routes
synthetic requests (~120 req/s) by those weights and ``report()``s windows every 0.25 s.
The candidate serves cleanly until ``t_fail``, then fails 20 % of its requests.

Measured per repeat (median over >= 5):
* ``decision_s`` — t_fail → the controller's rollback decision (persisted event time);
* ``zero_traffic_s`` — t_fail → the router's first poll that gives the candidate 0 %
  (no request is routed to it from then on).

Baseline, measured in the same run: the same controller with a 10 s analysis interval,
Flagger's floor (``analysis.interval`` ≥ 10 s in practice; metric queries every interval).

    .venv/bin/python -m benchmarks.rollback_bench --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # `python benchmarks/rollback_bench.py` (make bench) as well as `-m`

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402
from deployments.contracts import BASELINE, CANDIDATE, REPORT_INTERVAL_S, TRAFFIC_POLL_S, VariantWindow  # noqa: E402

REQUESTS_PER_REPORT = 30       # ~120 req/s
FAILURE_RATE = 0.2
HEALTHY_BEFORE_FAIL_S = 1.5


class RouterStandIn:
    """The router's control-path behaviour, against a real controller handle."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.weights = {BASELINE: 1.0}
        self.epoch = -1
        self.failure = 0.0
        self.zero_at: float | None = None
        self.rng = random.Random(time.time_ns())
        self.stop = False

    async def poll(self) -> None:
        while not self.stop:
            traffic = await self.handle.traffic.remote()
            self.weights, self.epoch = traffic["weights"], traffic["epoch"]
            if self.failure and self.zero_at is None and not self.weights.get(CANDIDATE):
                self.zero_at = time.time()
            await asyncio.sleep(TRAFFIC_POLL_S)

    async def serve(self) -> None:
        while not self.stop:
            counts = {BASELINE: [0, 0], CANDIDATE: [0, 0]}
            for _ in range(REQUESTS_PER_REPORT):
                variant = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
                counts[variant][0] += 1
                counts[variant][1] += variant == CANDIDATE and self.rng.random() < self.failure
            windows = [VariantWindow(v, "1" if v == BASELINE else "2", n, 0, e,
                                     [self.rng.uniform(4, 9) for _ in range(n)]).to_dict()
                       for v, (n, e) in counts.items() if n]
            await self.handle.report.remote("bench-router", windows)
            await asyncio.sleep(REPORT_INTERVAL_S)


async def one_rollback(handle, model: str, interval_s: float, failed_checks: int) -> dict[str, float]:
    router = RouterStandIn(handle)
    tasks = [asyncio.create_task(router.poll()), asyncio.create_task(router.serve())]
    spec = {"model": model, "baseline": "1", "candidate": "2", "steps": [25, 50, 100], "interval_s": interval_s,
            "min_requests": 100_000, "failed_checks_before_rollback": failed_checks,
            "thresholds": {"max_error_rate": 0.05, "min_requests_per_check": 10}}
    await handle.command.remote("start", {"spec": spec, "actor": "bench"})
    while not router.weights.get(CANDIDATE):
        await asyncio.sleep(0.05)
    # the onset falls anywhere in the analysis cycle, as a real failure would
    await asyncio.sleep(HEALTHY_BEFORE_FAIL_S + router.rng.uniform(0, interval_s))
    t_fail = time.time()
    router.failure = FAILURE_RATE
    while router.zero_at is None:
        await asyncio.sleep(0.02)
    status = await handle.status.remote()
    router.stop = True
    await asyncio.gather(*tasks)
    rollout = status["rollout"]
    decided = rollout["decision"]["at"]
    while rollout["phase"] == "rolling_back":     # let it settle before the next repeat
        await asyncio.sleep(0.2)
        rollout = (await handle.status.remote())["rollout"]
    return {"decision_s": decided - t_fail, "zero_traffic_s": router.zero_at - t_fail}


def register_versions(tracking_uri: str, model: str) -> None:
    from cluster.registry import Registry
    from cluster.settings import load_settings
    from tests.serve.helpers import quality_tags

    reg = Registry(load_settings(mlflow_tracking_uri=tracking_uri))
    reg.client.create_registered_model(model)
    run = reg.client.create_run(reg.ensure_experiment())
    for _ in range(2):   # equal validation figures: the quality gate lets the candidate start
        reg.client.create_model_version(model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                        tags=quality_tags())


def start_mlflow(folder: Path) -> tuple[str, int]:
    from cluster import stack
    from cluster.processes import free_port
    from cluster.settings import load_settings

    settings = load_settings(state_dir=folder, mlflow_port=free_port())
    proc = stack.start_mlflow(settings, folder / "mlflow.log")
    return str(settings.mlflow_tracking_uri), proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--failed-checks", type=int, default=2)
    parser.add_argument("--baseline-interval", type=float, default=10.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    from cluster import local_ray
    from cluster.processes import session_members, terminate
    from deployments.controller import RolloutController

    work = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    tracking_uri, mlflow_pid = start_mlflow(work)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    model = f"bench-{uuid.uuid4().hex[:6]}"
    register_versions(tracking_uri, model)
    local_ray.start(num_cpus=4)
    report = Report("rollback_bench", f"candidate fails {FAILURE_RATE:.0%} of requests after "
                                      f"{HEALTHY_BEFORE_FAIL_S}s + U(0, interval) at a 25% step; "
                                      f"~{REQUESTS_PER_REPORT * 4} req/s; "
                                      f"failed_checks_before_rollback={args.failed_checks}")
    try:
        from cluster.processes import free_port

        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})   # never a fixed port on a shared box
        handle = serve.run(RolloutController.bind(str(work / "state"), model, tracking_uri),
                           name="rollback-bench", route_prefix=None)
        results: dict[str, dict[str, list[float]]] = {}
        for label, interval in (("rayline interval 1s", 1.0),
                                (f"baseline interval {args.baseline_interval:g}s (Flagger floor)",
                                 args.baseline_interval)):
            for i in range(args.repeats):
                row = asyncio.run(one_rollback(handle, model, interval, args.failed_checks))
                report.add(config=label, repeat=i, **row)
                for key, value in row.items():
                    results.setdefault(label, {}).setdefault(key, []).append(value)
                print(f"{label} #{i}: decision {row['decision_s']:.2f}s, 0% traffic {row['zero_traffic_s']:.2f}s",
                      flush=True)
        rows = [{"config": label, "metric": key, **summarize(values)}
                for label, metrics in results.items() for key, values in metrics.items()]
        report.section("Results (seconds from first failure)", report.table(rows))
        ours, base = (results[k]["zero_traffic_s"] for k in results)
        ratio = summarize(base)["median"] / summarize(ours)["median"]
        report.section("Comparison", f"Median time to 0 % candidate traffic: {summarize(ours)['median']:.2f} s "
                                     f"at a 1 s interval vs {summarize(base)['median']:.2f} s at "
                                     f"{args.baseline_interval:g} s ({ratio:.1f}x faster). Target: ≤ 5 s.")
        out = report.write(f"python -m benchmarks.rollback_bench --repeats {args.repeats} "
                           f"--failed-checks {args.failed_checks} --baseline-interval {args.baseline_interval:g}")
        print(f"report: {out}")
    finally:
        serve.shutdown()
        ray.shutdown()
        terminate(session_members(mlflow_pid), grace_s=5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
