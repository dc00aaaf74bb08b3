"""What a batch means: the loss to train on and the metrics to evaluate, per kind of task.

``loss(model, x, y)`` drives training; ``sums(model, x, y, valid)`` returns additive statistics
(so ranks can all-reduce them) over the first ``valid`` rows of a padded batch — the forward
runs on the whole batch, so every rank runs it even when its share of a ragged last batch is
short or empty — and ``metrics(sums)`` turns them into ``val_*`` numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Classification:
    unit = "samples"
    sum_keys = ("loss", "correct", "n")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).float(), y)

    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, valid: int | None = None) -> dict[str, float]:
        logits, y = model(x).float()[:valid], y[:valid]
        return {"loss": float(F.cross_entropy(logits, y, reduction="sum")),
                "correct": float((logits.argmax(dim=1) == y).sum()), "n": float(len(y))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        return {"val_loss": sums["loss"] / n, "val_accuracy": sums["correct"] / n}

    def items(self, x: torch.Tensor) -> int:
        return x.shape[0]


class Regression(Classification):
    sum_keys = ("loss", "abs", "n")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(x).float(), y)

    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, valid: int | None = None) -> dict[str, float]:
        pred, y = model(x).float()[:valid], y[:valid]
        return {"loss": float(F.mse_loss(pred, y, reduction="sum")),
                "abs": float((pred - y).abs().sum()), "n": float(len(y))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        return {"val_loss": sums["loss"] / n, "val_rmse": math.sqrt(sums["loss"] / n), "val_mae": sums["abs"] / n}


class LanguageModeling(Classification):
    unit = "tokens"
    sum_keys = ("loss", "n")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def sums(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, valid: int | None = None) -> dict[str, float]:
        logits, y = model(x).float()[:valid], y[:valid]
        return {"loss": float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")),
                "n": float(y.numel())}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums["n"], 1.0)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    def items(self, x: torch.Tensor) -> int:
        return x.numel()


TASKS = {"classification": Classification, "regression": Regression, "language_modeling": LanguageModeling}


def task_for(name: str) -> Classification:
    return TASKS[name]()
