"""DeepSpeed ZeRO jobs on real Ray Train (2 CPU workers, gloo) with a real MLflow server.

Two fits keep the suite inside its budget: ZeRO-1 trains and reports per-rank memory; ZeRO-2
loses a worker mid-run, resumes from the sharded checkpoint, finishes and registers its
model — and its final checkpoint is what the consolidation and serving tests read.
ZeRO-3 training on CPU is shown by the benchmark (benchmarks/deepspeed_bench.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.registry import DataSpec, build_model
from train.config import parse_config
from train.consolidate import consolidated_state_dict
from train.deepspeed_config import DeepSpeedOptionError
from train.deepspeed_strategy import DS_DIR, DS_TAG
from train.faults import FAIL_AT_STEP_ENV, FAIL_RANK_ENV
from train.strategy import MODEL_FILE
from train.trainer import prepare, run_dir, train

ROOT = Path(__file__).resolve().parents[2]
VOCAB, SEQ = 32, 16
GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32}
STEPS_PER_EPOCH = 4  # 128 sequences / (16 per worker x 2 workers)


def job(run_name: str, stage: int, **extra):
    return parse_config({
        "run_name": run_name, "strategy": "deepspeed", "deepspeed": {"stage": stage},
        "model": {"name": "gpt", "params": GPT}, "batch_size": 16, "epochs": 4,
        "optimizer": {"name": "adamw", "lr": 1e-2}, "log_every": 2,
        "data": {"synthetic_tokens": {"vocab_size": VOCAB, "seq_len": SEQ, "train_sequences": 128,
                                      "validation_sequences": 32, "successors": 2}},
        "checkpoint": {"every_steps": 2, "keep": 2}, "failure": {"max_failures": 1},
        **extra,
    })


def checkpoints(config, settings) -> list[Path]:
    return sorted(run_dir(config, settings).glob("checkpoint_step*"))


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, settings):
    """A ZeRO-2 run whose rank 1 is killed at step 7; it resumes and registers its model."""
    config = job("ds-zero2-kill", stage=2, registration={"model_name": "ds-gpt", "metric": "val_loss"})
    os.environ[FAIL_AT_STEP_ENV], os.environ[FAIL_RANK_ENV] = "7", "1"
    try:
        outcome = train(config, settings)
    finally:
        os.environ.pop(FAIL_AT_STEP_ENV), os.environ.pop(FAIL_RANK_ENV)
    return config, outcome, checkpoints(config, settings)


def test_zero1_trains_gpt_to_a_lower_loss_and_logs_per_rank_memory(ray_cluster, settings):
    import mlflow

    config = job("ds-zero1", stage=1)
    outcome = train(config, settings, register=False)
    assert outcome.metrics["val_loss"] < 0.8 * math.log(VOCAB)  # an untrained model scores ~log(vocab)
    run = mlflow.MlflowClient(str(settings.mlflow_tracking_uri)).get_run(outcome.run_id)
    assert run.data.metrics["loss"] < math.log(VOCAB)  # step loss logged by rank 0
    for rank in (0, 1):  # ZeRO-1: each rank holds half of the Adam moments
        assert outcome.metrics[f"mem_rank{rank}_optimizer_moment_bytes"] > 0
        assert outcome.metrics[f"mem_rank{rank}_peak_rss_bytes"] > 0
    params = sum(p.numel() for p in build_model("gpt", GPT, DataSpec("tokens", vocab_size=VOCAB, seq_len=SEQ))
                 .parameters())
    assert outcome.metrics["mem_rank0_optimizer_moment_bytes"] <= 2 * 4 * params / 2 + 4096  # padding slack


def test_zero2_run_killed_mid_way_resumes_from_its_sharded_checkpoint_and_finishes(zero2_run):
    config, outcome, _ = zero2_run
    total = config.epochs * STEPS_PER_EPOCH
    assert outcome.metrics["step"] == total
    assert outcome.metrics["steps_this_attempt"] < total  # the last attempt started from a checkpoint
    assert outcome.metrics["val_loss"] < 0.8 * math.log(VOCAB)
    assert outcome.registered is not None and outcome.registered.name == "ds-gpt"


def test_every_rank_reports_its_zero_shard_and_only_the_newest_checkpoints_are_kept(zero2_run):
    config, _, kept = zero2_run
    assert 1 <= len(kept) <= config.checkpoint.keep
    shards = kept[-1] / DS_DIR / DS_TAG
    assert {p.name for p in shards.glob("zero_pp_rank_*_optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"}


def test_consolidated_state_dict_loads_into_the_plain_model_and_matches_the_engine(zero2_run):
    _, _, kept = zero2_run
    spec = DataSpec("tokens", vocab_size=VOCAB, seq_len=SEQ)
    consolidated = build_model("gpt", GPT, spec)
    consolidated.load_state_dict(consolidated_state_dict(kept[-1] / DS_DIR))  # strict: every key, every shape
    engine_export = build_model("gpt", GPT, spec)  # the engine's own weights, written beside the shards
    engine_export.load_state_dict(torch.load(kept[-1] / MODEL_FILE))
    tokens = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(consolidated.eval()(tokens), engine_export.eval()(tokens))


def test_registered_model_serves_without_importing_deepspeed(zero2_run, settings):
    _, outcome, _ = zero2_run
    uri = f"models:/{outcome.registered.name}/{outcome.registered.version}"
    code = (
        "import sys, torch, mlflow.pytorch, models.packaging\n"
        f"module = mlflow.pytorch.load_model({uri!r}, map_location='cpu').eval()\n"
        f"print(tuple(module(torch.zeros(1, {SEQ}, dtype=torch.long)).shape))\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'ray')]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"(1, {SEQ}, {VOCAB})")


@pytest.mark.parametrize("section, reason", [
    ({"stage": 2, "optimizer": "OneBitAdam"}, r"OneBitAdam was removed from DeepSpeed in 0\.19\.7"),
    ({"stage": 2, "zero_quantized_weights": True}, "only apply to ZeRO stage 3, not stage 2"),
    ({"stage": 3, "zero_quantized_gradients": True}, "needs a CUDA device"),
    ({"stage": 2, "raw": {"zero_optimization": {"stage": 3}}}, "set it in one place"),
])
def test_unavailable_or_contradictory_options_fail_before_any_worker_starts(settings, section, reason):
    config = job("ds-rejected", stage=2)
    config.deepspeed = section
    with pytest.raises(DeepSpeedOptionError, match=reason):
        prepare(config, settings)  # the driver's checks: no Ray, no workers
