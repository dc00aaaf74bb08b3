"""Automatic resume is exact: a run that failed mid-way through its second epoch, resubmitted under the same
run name, ends with bit-for-bit the weights of an uninterrupted run (CPU, gloo, same seed; dropout on, so the
RNG state is restored too) — and a resubmission resumes only the same job: any change to what decides the result
is refused in one line naming it, unless the user asks to resume with changes (audited in MLflow) or for a new run.
A worker dying inside a run (Ray Train restarting the group from the checkpoint) is tested on token shards
(``tests/train/test_token_training.py``), on S3 (``tests/storage``) and with real signals (``tests/faults``).

Real Ray Train (2 CPU workers), real MLflow. The failure is the RAYLINE_TEST_FAIL_AT_STEP hook:
rank 1 hard-exits (os._exit) before the given step, once per run.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cluster.cli.main import app
from tests.train.helpers import TOTAL_STEPS, tiny_gpt_config
from train import fingerprint
from train.faults import FAIL_AT_STEP_ENV
from train.strategy import MODEL_FILE
from train.tracking import RESUME_TAG
from train.trainer import TrainingFailedError, prepare, run_dir, train


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


def _changed(run_name: str, change: str):
    """``tiny_gpt_config(run_name)`` with one kind of change a user might make between submissions."""
    config = tiny_gpt_config(run_name, max_failures=0)
    if change == "model":
        config.model.params["n_embd"] = 48
    elif change == "data":
        config.data.synthetic_tokens.train_sequences = 320
    elif change == "optimizer":
        config.optimizer.lr = 2e-3
    elif change == "schedule":
        config.epochs = 3
    elif change == "seed":
        config.seed = 8
    elif change == "world size":
        config.scaling.num_workers = 1
    elif change == "strategy":
        config.strategy = "deepspeed"
    return config


FAIL_AT = 13   # rank 1 hard-exits before step 13 of 16, in the second epoch (steps 9-16); checkpoints every 3 steps

CHANGES = {  # kind of change → what the one-line refusal names
    "model": "another model (model.params.n_embd: 32 → 48)",
    "data": "another data (data.synthetic_tokens.train_sequences: 256 → 320)",
    "optimizer": "another optimizer (optimizer.lr: 0.001 → 0.002)",
    "schedule": "another schedule (schedule.epochs: 2 → 3)",
    "seed": "another data and seed (data.dataset_version: \"seed7\" → \"seed8\"; seed: 7 → 8)",
    "world size": "another world size (world_size: 2 → 1)",
    "strategy": "another strategy (strategy.name: \"ddp\" → \"deepspeed\")",
}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resubmitting_a_run_name_resumes_only_the_same_job(uninterrupted, settings, monkeypatch, tmp_path):
    name = "resume-resubmit"
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(FAIL_AT))
    with pytest.raises(TrainingFailedError):
        train(tiny_gpt_config(name, max_failures=0), settings, register=False)
    assert (run_dir(tiny_gpt_config(name), settings) / f".injected_failure_step{FAIL_AT}").exists()
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    outcome = train(tiny_gpt_config(name, max_failures=0), settings, register=False)
    # resumed mid-way through the second epoch, from a checkpoint before the failure, and ran only what was left
    resumed = outcome.metrics["resumed_from_step"]
    assert resumed in (9, 12) and outcome.metrics["steps_this_attempt"] == TOTAL_STEPS - resumed
    assert re.search(r"checkpoint_step00000016$", outcome.checkpoint)
    _assert_identical(_weights(outcome.checkpoint), _weights(uninterrupted.checkpoint))

    # Each kind of change is refused before anything starts, in one line naming it.
    for change, named in CHANGES.items():
        with pytest.raises(fingerprint.RunChangedError) as refused:
            train(_changed(name, change), settings, register=False)
        assert named in str(refused.value) and "\n" not in str(refused.value), change
    with pytest.raises(fingerprint.RunChangedError, match="cannot be resumed across"):  # whatever the user asks
        train(_changed(name, "world size"), settings, register=False, resume_with_changes=True)

    # The CLI: the same refusal as one stderr line and a non-zero exit.
    path = tmp_path / "resubmit.yaml"
    path.write_text(yaml.safe_dump(_changed(name, "optimizer").model_dump(mode="json")))
    for key, value in {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                       "CHECKPOINTS_ROOT": settings.checkpoints_root, "DATASETS_ROOT": settings.datasets_root}.items():
        monkeypatch.setenv(f"RAYLINE_{key}", str(value))
    done = CliRunner().invoke(app, ["train", str(path)])
    assert done.exit_code == fingerprint.RunChangedError.exit_code != 0
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobs.train: error: ") and CHANGES["optimizer"] in lines[0]

    # Asked for explicitly: resume with the changes, from the checkpoint, audited in the MLflow run.
    extended = train(_changed(name, "schedule"), settings, register=False, resume_with_changes=True)
    assert extended.run_id == outcome.run_id
    assert extended.metrics["resumed_from_step"] == TOTAL_STEPS and extended.metrics["step"] == TOTAL_STEPS * 3 // 2
    tags = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(extended.run_id).data.tags
    assert tags[f"{RESUME_TAG}.1"] == "schedule.epochs: 2 → 3"

    # Or a new run under the same name: the old folder is kept aside, nothing of it is resumed.
    folder = run_dir(tiny_gpt_config(name), settings)
    config = _changed(name, "seed")
    claim = fingerprint.claim(folder, fingerprint.of(config, prepare(config, settings)[0]), name, new_run=True)
    assert claim.replaced and sorted(p.name for p in Path(claim.replaced).glob("checkpoint_step*"))
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == [fingerprint.FINGERPRINT_FILE]
