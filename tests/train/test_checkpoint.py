"""The checkpoint component: a round trip restores everything; a damaged or partial save is refused,
and a restore falls back from a damaged latest checkpoint to the newest good one (locally and on S3)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cluster import files
from tests.train.helpers import save_tabular_mlp_checkpoint, trained_tabular_mlp
from train.checkpoint import CheckpointError, checkpoint_dir_name, manifest_file, read_state, restore_latest_good
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


def _checkpoint_at(root: str, step: int):  # -> ray.train.Checkpoint
    import ray.train
    from pyarrow.fs import LocalFileSystem

    fs, path = files.arrow_filesystem(root)
    return ray.train.Checkpoint(f"{path}/{checkpoint_dir_name(step)}", filesystem=fs or LocalFileSystem())


def _damage(kind: str) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        if kind == "checksum":
            (directory / MODEL_FILE).write_bytes(b"not the weights the manifest vouches for")
        else:
            (directory / manifest_file(0)).unlink()  # the save never finished
    return damage


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["checksum", "manifest"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path, request, where: str,
                                                                          damage: str, caplog):
    """Two checkpoints of a run (steps 3 and 6) on local disk or S3 (moto's server); step 6 damaged.

    The restore Ray Train's ``get_checkpoint()`` would start from (step 6) is refused and step 3,
    the newest one that verifies, is loaded instead, with a warning naming what was refused.
    """
    local_run = tmp_path / "run"
    for step in (3, 6):
        (local_run / checkpoint_dir_name(step)).mkdir(parents=True)
        save_tabular_mlp_checkpoint(local_run / checkpoint_dir_name(step), steps=step)
    _damage(damage)(local_run / checkpoint_dir_name(6))
    root = str(local_run)
    if where == "s3":
        root = f"s3://{request.getfixturevalue('s3').bucket()}/checkpoints/run"
        files.upload_tree(local_run, root)

    strategy, scheduler = trained_tabular_mlp(0)
    with caplog.at_level(logging.WARNING, logger="train.checkpoint"):
        state = restore_latest_good(_checkpoint_at(root, 6),
                                    lambda d: read_state(d, 0, strategy, {"scheduler": scheduler}))
    assert state.step == 3
    original, _ = trained_tabular_mlp(3)
    for key, value in original.raw_model.state_dict().items():
        assert torch.equal(strategy.raw_model.state_dict()[key], value)
    assert any("resumed from the older" in r.message and checkpoint_dir_name(3) in r.message
               and checkpoint_dir_name(6) in r.message for r in caplog.records)


def test_a_run_without_any_good_checkpoint_still_fails_loudly(tmp_path: Path):
    (tmp_path / "run" / checkpoint_dir_name(3)).mkdir(parents=True)
    save_tabular_mlp_checkpoint(tmp_path / "run" / checkpoint_dir_name(3))
    _damage("checksum")(tmp_path / "run" / checkpoint_dir_name(3))
    strategy, scheduler = trained_tabular_mlp(0)
    with pytest.raises(CheckpointError, match="no checkpoint of the run verifies"):
        restore_latest_good(_checkpoint_at(str(tmp_path / "run"), 3),
                            lambda d: read_state(d, 0, strategy, {"scheduler": scheduler}))
