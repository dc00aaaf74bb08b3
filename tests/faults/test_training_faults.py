"""Training faults that come from outside the training code, each with its measured outcome (issue 8).

- A Ray Train worker process SIGKILLed mid-epoch: Ray Train restarts the worker group from the
  last checkpoint it registered, and the run finishes having lost at most one checkpoint interval.
- A training job's driver SIGKILLed on a real ``rayline up`` stack: Ray marks the job failed, and
  the job resubmitted under the same run name resumes from the checkpoint and finishes the same run.

Everything is real: Ray Train (2 CPU workers over gloo), MLflow servers, the Ray Jobs API, signals
sent with ``os.kill``. The one test hook is ``RAYLINE_TEST_HOLD_AT_STEP`` (``train.faults``): each
rank notes every step with its PID and waits the first time it completes the chosen step, so the
kill lands mid-epoch after a checkpoint Ray has registered (steps take milliseconds otherwise).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml

from cluster.jobs_client import JobsClient, parse_result
from cluster.processes import process_alive, wait_until
from cluster.settings import Settings
from tests.cluster.helpers import rayline, stack_env, stack_settings
from tests.faults.figures import record
from tests.faults.helpers import (
    HOLD_AT,
    ROOT,
    WAIT_S,
    resumed_attempt,
    steps_lost,
    wait_until_held,
)
from tests.train.helpers import TOTAL_STEPS, tiny_gpt_config
from train.faults import HOLD_AT_STEP_ENV
from train.tracking import RUN_ID_FILE
from train.trainer import run_dir, train


def test_worker_sigkilled_mid_epoch_resumes_from_the_last_checkpoint(ray_cluster, settings, monkeypatch):
    config = tiny_gpt_config("fault-worker-sigkill", max_failures=1)
    directory = run_dir(config, settings)
    monkeypatch.setenv(HOLD_AT_STEP_ENV, str(HOLD_AT))
    with ThreadPoolExecutor(1) as pool:
        started_at = time.time()
        running = pool.submit(train, config, settings, register=False)
        checkpoint_step, first = wait_until_held(directory)
        victim = next(p.pid for p in first if p.rank == 0 and p.step == HOLD_AT)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        outcome = running.result(timeout=WAIT_S)
    ended_at = time.time()

    resumed = resumed_attempt(directory, first)
    lost = steps_lost(first, int(outcome.metrics["resumed_from_step"]))
    assert not process_alive(victim)
    assert outcome.metrics["step"] == TOTAL_STEPS
    assert outcome.metrics["resumed_from_step"] == checkpoint_step  # the last checkpoint saved before the kill
    assert outcome.metrics["steps_this_attempt"] == TOTAL_STEPS - checkpoint_step
    assert resumed and min(p.step for p in resumed) == checkpoint_step + 1
    assert 0 < lost <= config.checkpoint.every_steps
    record("training worker SIGKILL mid-epoch", steps_lost=lost, checkpoint_every_steps=config.checkpoint.every_steps,
           killed_at_step=max(p.step for p in first), resumed_from_step=checkpoint_step,
           seconds_start_to_first_step=round(first[0].time - started_at, 2),
           seconds_kill_to_resumed_step=round(min(p.time for p in resumed) - killed_at, 2),
           seconds_kill_to_run_end=round(ended_at - killed_at, 2))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Settings]:
    """A private ``rayline up`` stack (Ray head with the Jobs API, MLflow) on free ports, always brought down."""
    env = stack_env(tmp_path / "stack", ray_num_cpus="4")
    try:
        started = rayline(env, "up")
        assert started.returncode == 0, started.stdout + started.stderr
        yield stack_settings(env)
    finally:
        rayline(env, "down")


def driver_pid(client: JobsClient, job_id: str) -> int:
    """The PID of the job's driver (its entrypoint process), as Ray's job API reports it."""
    def pid() -> int | None:
        job = next((j for j in client.list() if j.submission_id == job_id), None)
        return int(job.driver_info.pid) if job and job.driver_info else None

    assert wait_until(pid, timeout_s=60, interval_s=0.5), f"job {job_id} reports no driver"
    found = pid()
    assert found is not None and "jobs.train" in " ".join(psutil.Process(found).cmdline())
    return found


def test_job_driver_sigkilled_then_resubmitted_under_the_same_run_name_resumes(stack, tmp_path):
    run_name = "fault-driver-sigkill"
    config = tiny_gpt_config(run_name, max_failures=1)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    entrypoint = f"python -m jobs.train --config {config_file} --run-name {run_name}"
    client, env = JobsClient(stack), {HOLD_AT_STEP_ENV: str(HOLD_AT)}
    directory = Path(str(stack.checkpoints_root)) / run_name

    submitted_at = time.time()
    first_job = client.submit(entrypoint, working_dir=ROOT, env=env)
    checkpoint_step, first = wait_until_held(directory)
    run_id = (directory / RUN_ID_FILE).read_text().strip()
    driver = driver_pid(client, first_job)
    killed_at = time.time()
    os.kill(driver, signal.SIGKILL)
    assert client.wait(first_job, timeout_s=WAIT_S) in {"FAILED", "STOPPED"}
    failed_at = time.time()
    assert wait_until(lambda: not any(process_alive(p.pid) for p in first), timeout_s=120)  # Ray reaped its workers
    resubmitted_at = time.time()

    result = client.run(entrypoint, working_dir=ROOT, env=env, timeout_s=WAIT_S)
    finished_at = time.time()
    resumed = resumed_attempt(directory, first)
    final = mlflow.MlflowClient(str(stack.mlflow_tracking_uri)).get_run(run_id).data.metrics
    assert result["run_name"] == run_name and result["run_id"] == run_id  # the same MLflow run, finished
    assert result["metrics"]["step"] == TOTAL_STEPS
    assert final["final_resumed_from_step"] == checkpoint_step  # resumed, not restarted from step 0
    assert resumed and min(p.step for p in resumed) == checkpoint_step + 1
    assert parse_result(client.logs(first_job)) is None  # the killed driver never reported a result
    record("training job driver SIGKILL + resubmit", resumed_from_step=checkpoint_step,
           steps_lost=steps_lost(first, checkpoint_step), checkpoint_every_steps=config.checkpoint.every_steps,
           seconds_kill_to_job_failed=round(failed_at - killed_at, 2),
           seconds_kill_to_workers_gone=round(resubmitted_at - killed_at, 2),
           seconds_resubmit_to_resumed_step=round(min(p.time for p in resumed) - resubmitted_at, 2),
           total_wall_s=round(finished_at - submitted_at, 2))
