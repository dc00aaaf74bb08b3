"""Optimizer and learning-rate schedule from the config (one place, every strategy).

A checkpoint restores where training is (the schedule's step, the optimizer's moments), never
what the config says: after a restore, ``apply_config`` puts the config's hyperparameters back,
so a run resumed with changes trains with them (and an unchanged resume is bit for bit the same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimizerSection, ScheduleSection


def build_optimizer(section: OptimizerSection, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if section.name == "sgd":
        return torch.optim.SGD(params, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    cls = torch.optim.AdamW if section.name == "adamw" else torch.optim.Adam
    return cls(params, lr=section.lr, betas=section.betas, weight_decay=section.weight_decay)


def lr_factor(section: ScheduleSection, step: int, total_steps: int) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up, then constant / cosine / linear decay."""
    if step < section.warmup_steps:
        return (step + 1) / section.warmup_steps
    if section.name == "constant":
        return 1.0
    span = max(total_steps - section.warmup_steps, 1)
    progress = min((step - section.warmup_steps) / span, 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if section.name == "cosine" else 1.0 - progress
    return section.min_lr_ratio + (1 - section.min_lr_ratio) * decay


class _Factor:
    """Picklable LR lambda (so the scheduler's state round-trips through checkpoints)."""

    def __init__(self, section: ScheduleSection, total_steps: int) -> None:
        self.section = section
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return lr_factor(self.section, step, self.total_steps)


class ConfiguredLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR whose checkpointed state is its position only: the schedule itself is the config's."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})


def build_scheduler(section: ScheduleSection, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return ConfiguredLR(optimizer, _Factor(section, total_steps))


def apply_config(section: OptimizerSection, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After a restore: the config's lr, weight decay, betas / momentum at the restored schedule step."""
    scheduler.base_lrs = [section.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = section.lr
        group["lr"] = section.lr * factor(scheduler.last_epoch)
        group["weight_decay"] = section.weight_decay
        if "betas" in group:
            group["betas"] = section.betas
        if "momentum" in group:
            group["momentum"] = section.momentum
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
