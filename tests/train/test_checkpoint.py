"""The checkpoint component: a round trip restores everything; a damaged or partial save is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.helpers import save_tabular_mlp_checkpoint, trained_tabular_mlp
from train.checkpoint import CheckpointError, manifest_file, read_state
from train.strategy import MODEL_FILE


def test_restore_brings_back_weights_optimizer_schedule_rng_and_data_position(tmp_path: Path):
    save_tabular_mlp_checkpoint(tmp_path)
    saved_rng = torch.load(tmp_path / "rng_rank0.pt", weights_only=False)
    original, original_sched = trained_tabular_mlp(3)

    strategy, scheduler = trained_tabular_mlp(0)
    state = read_state(tmp_path, 0, strategy, {"scheduler": scheduler})
    assert (state.step, state.epoch, state.batch_in_epoch) == (3, 1, 2)
    for key, value in original.raw_model.state_dict().items():
        assert torch.equal(strategy.raw_model.state_dict()[key], value)
    assert scheduler.state_dict()["last_epoch"] == original_sched.state_dict()["last_epoch"]
    assert strategy.optimizer.state_dict()["state"][0]["step"] == original.optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(torch.get_rng_state(), saved_rng["torch"])


def test_a_truncated_file_is_refused(tmp_path: Path):
    save_tabular_mlp_checkpoint(tmp_path)
    data = (tmp_path / MODEL_FILE).read_bytes()
    (tmp_path / MODEL_FILE).write_bytes(data[: len(data) // 2])
    strategy, scheduler = trained_tabular_mlp(0)
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        read_state(tmp_path, 0, strategy, {"scheduler": scheduler})


def test_a_save_missing_a_ranks_manifest_is_refused(tmp_path: Path):
    save_tabular_mlp_checkpoint(tmp_path)
    state = json.loads((tmp_path / "train_state.json").read_text())
    (tmp_path / "train_state.json").write_text(json.dumps({**state, "world_size": 2}))
    (tmp_path / manifest_file(0)).write_text(json.dumps({}))  # rank 0 done, rank 1 never finished
    strategy, scheduler = trained_tabular_mlp(0)
    with pytest.raises(CheckpointError, match="rank 1"):
        read_state(tmp_path, 0, strategy, {"scheduler": scheduler})
