"""The checkpoint component: a round trip restores everything; a damaged or partial save is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.registry import DataSpec, build_model
from train.checkpoint import CheckpointError, TrainState, manifest_file, read_state, write_rank_files
from train.config import parse_config
from train.optim import build_optimizer, build_scheduler
from train.strategy import MODEL_FILE, DDPStrategy

CONFIG = parse_config({"run_name": "ck", "model": {"name": "tabular_mlp", "params": {"hidden": [16]}},
                       "data": {"dataset": "d", "version": "v1"}, "schedule": {"name": "cosine", "warmup_steps": 2}})


def _trained(steps: int):
    torch.manual_seed(0)
    model = build_model("tabular_mlp", {"hidden": [16]}, DataSpec("tabular", num_inputs=4, num_outputs=2))
    strategy = DDPStrategy(CONFIG, torch.device("cpu"), wrap=lambda m: m)
    strategy.setup(model, lambda m: build_optimizer(CONFIG.optimizer, m))
    scheduler = build_scheduler(CONFIG.schedule, strategy.optimizer, total_steps=20)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(strategy.model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        strategy.backward(loss)
        strategy.step(1.0)
        scheduler.step()
    return strategy, scheduler


def _save(directory: Path, steps: int = 3) -> None:
    strategy, scheduler = _trained(steps)
    write_rank_files(directory, 0, strategy, TrainState(step=steps, epoch=1, batch_in_epoch=2),
                     {"scheduler": scheduler})


def test_restore_brings_back_weights_optimizer_schedule_rng_and_data_position(tmp_path: Path):
    _save(tmp_path)
    saved_rng = torch.load(tmp_path / "rng_rank0.pt", weights_only=False)
    original, original_sched = _trained(3)

    strategy, scheduler = _trained(0)
    state = read_state(tmp_path, 0, strategy, {"scheduler": scheduler})
    assert (state.step, state.epoch, state.batch_in_epoch) == (3, 1, 2)
    for key, value in original.raw_model.state_dict().items():
        assert torch.equal(strategy.raw_model.state_dict()[key], value)
    assert scheduler.state_dict()["last_epoch"] == original_sched.state_dict()["last_epoch"]
    assert strategy.optimizer.state_dict()["state"][0]["step"] == original.optimizer.state_dict()["state"][0]["step"]
    assert torch.equal(torch.get_rng_state(), saved_rng["torch"])


def test_a_truncated_file_is_refused(tmp_path: Path):
    _save(tmp_path)
    data = (tmp_path / MODEL_FILE).read_bytes()
    (tmp_path / MODEL_FILE).write_bytes(data[: len(data) // 2])
    strategy, scheduler = _trained(0)
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        read_state(tmp_path, 0, strategy, {"scheduler": scheduler})


def test_a_save_missing_a_ranks_manifest_is_refused(tmp_path: Path):
    _save(tmp_path)
    state = json.loads((tmp_path / "train_state.json").read_text())
    (tmp_path / "train_state.json").write_text(json.dumps({**state, "world_size": 2}))
    (tmp_path / manifest_file(0)).write_text(json.dumps({}))  # rank 0 done, rank 1 never finished
    strategy, scheduler = _trained(0)
    with pytest.raises(CheckpointError, match="rank 1"):
        read_state(tmp_path, 0, strategy, {"scheduler": scheduler})
