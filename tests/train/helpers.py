"""Tiny training configs and a trained tabular model, shared by the train tests and the fault tests."""

from __future__ import annotations

from pathlib import Path

import torch

from models.registry import DataSpec, build_model
from train.checkpoint import TrainState, write_rank_files
from train.config import parse_config
from train.optim import build_optimizer, build_scheduler
from train.strategy import DDPStrategy

TOTAL_STEPS = 16  # 2 epochs × 8 steps; checkpoints at steps 3, 6, 8 (epoch end), 9, 12, 15, 16


def tiny_gpt_config(run_name: str, max_failures: int = 1):
    """A 1-layer GPT on synthetic tokens: 16 steps, checkpoints every 3, small enough for exact-resume tests."""
    return parse_config({
        "run_name": run_name, "seed": 7,
        "model": {"name": "gpt", "params": {"n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1}},
        "data": {"synthetic_tokens": {"vocab_size": 32, "seq_len": 16, "train_sequences": 256,
                                      "validation_sequences": 32}},
        "batch_size": 16, "epochs": 2, "schedule": {"name": "cosine", "warmup_steps": 2},
        "checkpoint": {"every_steps": 3, "keep": 2}, "failure": {"max_failures": max_failures}, "log_every": 1,
    })


TINY_TABULAR_CONFIG = parse_config({"run_name": "ck", "model": {"name": "tabular_mlp", "params": {"hidden": [16]}},
                                    "data": {"dataset": "d", "version": "v1"},
                                    "schedule": {"name": "cosine", "warmup_steps": 2}})


def trained_tabular_mlp(steps: int):
    """A seeded tabular MLP (strategy, scheduler) after ``steps`` optimizer steps on random data."""
    torch.manual_seed(0)
    model = build_model("tabular_mlp", {"hidden": [16]}, DataSpec("tabular", num_inputs=4, num_outputs=2))
    strategy = DDPStrategy(TINY_TABULAR_CONFIG, torch.device("cpu"), wrap=lambda m: m)
    strategy.setup(model, lambda m: build_optimizer(TINY_TABULAR_CONFIG.optimizer, m))
    scheduler = build_scheduler(TINY_TABULAR_CONFIG.schedule, strategy.optimizer, total_steps=20)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(strategy.model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
        strategy.backward(loss)
        strategy.step(1.0)
        scheduler.step()
    return strategy, scheduler


def save_tabular_mlp_checkpoint(directory: Path, steps: int = 3) -> None:
    """Rank 0's checkpoint files of ``trained_tabular_mlp(steps)`` written into ``directory``."""
    strategy, scheduler = trained_tabular_mlp(steps)
    write_rank_files(directory, 0, strategy, TrainState(step=steps, epoch=1, batch_in_epoch=2),
                     {"scheduler": scheduler})
