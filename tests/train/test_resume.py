"""Automatic resume is exact: a run interrupted by a dead worker, or resubmitted under the same
run name, ends with bit-for-bit the weights of an uninterrupted run (CPU, gloo, same seed).

Real Ray Train (2 CPU workers), real MLflow. The failure is the RAYLINE_TEST_FAIL_AT_STEP hook:
rank 1 hard-exits (os._exit) before the given step, once per run.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch

from tests.train.helpers import TOTAL_STEPS, tiny_gpt_config
from train.faults import FAIL_AT_STEP_ENV
from train.strategy import MODEL_FILE
from train.trainer import TrainingFailedError, run_dir, train


def _weights(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(checkpoint) / MODEL_FILE)


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different}"


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, settings, monkeypatch_module):
    monkeypatch_module.delenv(FAIL_AT_STEP_ENV, raising=False)
    return train(tiny_gpt_config("resume-reference"), settings, register=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_uninterrupted_run_keeps_the_best_n_and_the_latest_checkpoint(uninterrupted, settings):
    on_disk = sorted(p.name for p in run_dir(tiny_gpt_config("resume-reference"), settings).glob("checkpoint_step*"))
    history = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_metric_history(uninterrupted.run_id, "val_loss")
    by_step = {m.step: m.value for m in history}
    best_two = sorted(by_step, key=lambda s: (by_step[s], s))[:2]
    expected = sorted({f"checkpoint_step{s:08d}" for s in [*best_two, TOTAL_STEPS]})
    assert on_disk == expected
    assert sorted(Path(p).name for p in uninterrupted.kept_checkpoints) == expected
    assert uninterrupted.metrics["step"] == TOTAL_STEPS


def test_worker_killed_mid_run_resumes_and_ends_with_identical_weights(uninterrupted, settings, monkeypatch):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "10")
    outcome = train(tiny_gpt_config("resume-killed"), settings, register=False)
    assert (run_dir(tiny_gpt_config("resume-killed"), settings) / ".injected_failure_step10").exists()
    assert outcome.metrics["steps_this_attempt"] < TOTAL_STEPS  # the second attempt started from a checkpoint
    _assert_identical(_weights(outcome.checkpoint), _weights(uninterrupted.checkpoint))


def test_resubmitting_a_failed_run_name_resumes_from_its_checkpoint(uninterrupted, settings, monkeypatch):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "7")
    with pytest.raises(TrainingFailedError):
        train(tiny_gpt_config("resume-resubmit", max_failures=0), settings, register=False)
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    outcome = train(tiny_gpt_config("resume-resubmit", max_failures=0), settings, register=False)
    assert 0 < outcome.metrics["steps_this_attempt"] < TOTAL_STEPS  # resumed from a checkpoint before step 7
    assert re.search(r"checkpoint_step00000016$", outcome.checkpoint)
    _assert_identical(_weights(outcome.checkpoint), _weights(uninterrupted.checkpoint))
