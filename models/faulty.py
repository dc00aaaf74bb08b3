"""A model wrapper that fails a fraction of calls: the 'deliberately broken' candidate.

Used by the demo's v3 and by rollback tests. It is a real registered model that really
raises inside the serving replica, so the rollout controller sees real errors.
"""

from __future__ import annotations

import random

import torch
from torch import nn


class FaultInjected(RuntimeError):
    """Raised by :class:`FaultyModel` on the calls chosen to fail."""


class FaultyModel(nn.Module):
    def __init__(self, inner: nn.Module, failure_rate: float, extra_latency_s: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be in [0, 1]")
        self.inner = inner
        self.failure_rate = failure_rate
        self.extra_latency_s = extra_latency_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_latency_s:
            import time

            time.sleep(self.extra_latency_s)
        if random.random() < self.failure_rate:
            raise FaultInjected(f"injected failure (rate {self.failure_rate:.0%})")
        return self.inner(x)
