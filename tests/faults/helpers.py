"""What the fault suites share: a training run held at a known step, and the load generator in its own process.

- Training: ``RAYLINE_TEST_HOLD_AT_STEP`` (``train.faults``) makes every rank note each step with its
  PID and wait the first time it completes ``HOLD_AT``; :func:`wait_until_held` returns once both
  ranks wait there and Ray Train has registered the newest checkpoint, so a kill from outside lands
  mid-epoch with a known checkpoint to resume from.
- Serving: ``python -m cluster.loadgen`` started in its own process session against a router URL,
  and its written result read back; a real but slow model (:func:`slow_model`) and
  :func:`wait_for_requests_in_flight`, so a replica is killed while it holds admitted requests
  (what the router's replica-death retry is for: a kill between two requests proves nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

from cluster.processes import start_detached, wait_until
from tests.serve.helpers import instance, tiny_model, wait_for
from train.faults import Progress, read_progress

ROOT = Path(__file__).resolve().parents[2]
HOLD_AT = 5  # mid-epoch 0 (8 steps per epoch), after the checkpoint at step 3 (every_steps=3)
WORLD = 2
WAIT_S = 300.0  # generous: the machine is shared
# Every forward pass of slow_model(): at 40 req/s over 2 replicas each holds ~5-10 requests, and one
# replica alone still serves 32 per pass (~128 req/s), far from the router's 10 s deadline.
MODEL_LATENCY_S = 0.25


def registered_step(directory: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager snapshot)."""
    try:
        latest = json.loads((directory / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):  # not written yet, or read mid-write
        return None
    return int(latest["metrics"]["step"]) if latest else None


def newest_on_disk(directory: Path) -> int | None:
    steps = [int(p.name.removeprefix("checkpoint_step")) for p in directory.glob("checkpoint_step*")]
    return max(steps, default=None)


def wait_until_held(directory: Path) -> tuple[int, list[Progress]]:
    """Wait until every rank holds at HOLD_AT and Ray has registered the newest checkpoint written.

    Returns that checkpoint's step and the first attempt's progress: from here on no report is
    in flight, so the checkpoint to resume from is known before the kill.
    """
    def settled() -> bool:
        held = {p.rank for p in read_progress(directory) if p.step == HOLD_AT}
        step = registered_step(directory)
        return len(held) == WORLD and step is not None and step == newest_on_disk(directory)

    assert wait_until(settled, timeout_s=WAIT_S, interval_s=0.5), (
        f"training never held at step {HOLD_AT} with a registered checkpoint: {read_progress(directory)[-4:]}")
    step = registered_step(directory)
    assert step is not None and 0 < step < HOLD_AT
    return step, read_progress(directory)


def resumed_attempt(directory: Path, first: list[Progress]) -> list[Progress]:
    """Progress noted by worker processes that did not exist in the first attempt."""
    old = {p.pid for p in first}
    return [p for p in read_progress(directory) if p.pid not in old]


def steps_lost(first: list[Progress], resumed_from: int) -> int:
    return max(p.step for p in first) - resumed_from


def start_loadgen(url: str, model: str, workdir: Path, rate_per_s: float, duration_s: float) -> subprocess.Popen:
    """``python -m cluster.loadgen`` against the router at ``url``, in its own process session."""
    records = workdir / "records.json"
    records.write_text(json.dumps([instance(i) for i in range(100)]))
    cmd = [sys.executable, "-m", "cluster.loadgen", "--url", url, "--model", model,
           "--records", str(records), "--rate", str(rate_per_s), "--duration", str(duration_s),
           "--out", str(workdir / "load.json")]
    return start_detached(cmd, workdir / "loadgen.log", env={"PYTHONPATH": str(ROOT)})


def loadgen_result(proc: subprocess.Popen, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Wait for the load generator to finish and read the result it wrote."""
    rc = proc.wait(timeout=timeout_s)
    log = (workdir / "loadgen.log").read_text()[-2000:]
    assert rc == 0, f"loadgen exited {rc}: {log}"
    return json.loads((workdir / "load.json").read_text())


def slow_model() -> torch.nn.Module:
    """A real model that never fails, every forward pass MODEL_LATENCY_S: requests stay in flight on its replica.

    Serve it with ``replica_env={}`` (user code on a thread of its own): on the app's default fast path
    the forward pass would also hold up Serve's queue-length probes, and the router's handle would stop
    sending to the replica (requests 504 in the handle's queue instead of being in flight on the replica).
    """
    from models.faulty import FaultyModel

    return FaultyModel(tiny_model(0), 0.0, extra_latency_s=MODEL_LATENCY_S)


def wait_for_requests_in_flight(actor_name: str, at_least: int, timeout_s: float) -> int:
    """How many admitted requests the Serve replica ``actor_name`` holds, once it holds ``at_least``.

    Serve's own count (the replica actor's ``get_num_ongoing_requests``, answered on a thread of its own,
    so a forward pass does not delay it), asked from a Ray driver of the replica's cluster. With
    :func:`slow_model` the requests counted are still waiting for their answer when a kill lands a few
    ms later. AssertionError when the replica never holds that many within ``timeout_s``.
    """
    import ray

    actor = ray.get_actor(actor_name, namespace="serve")
    seen = [0]

    def held() -> int:
        ongoing = int(ray.get(actor.get_num_ongoing_requests.remote(), timeout=10))
        seen[0] = max(seen[0], ongoing)
        return ongoing if ongoing >= at_least else 0

    try:
        return wait_for(held, timeout_s=timeout_s, every_s=0.02)
    except AssertionError:
        raise AssertionError(f"{actor_name} held at most {seen[0]} requests in {timeout_s} s, "
                             f"never {at_least}") from None
