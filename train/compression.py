"""Gradient compression for DDP (communication hooks) and the bytes it saves, measured.

``attach(ddp_model, section)`` registers PyTorch's hook for the chosen kind — plain
allreduce (``none``), ``fp16``/``bf16`` casting, or PowerSGD (rank, start iteration, error
feedback) — wrapped so every step records:

- ``uncompressed``: bytes of the fp32 gradient buckets DDP handed to the hook;
- ``sent``: bytes of the tensors the hook actually passed to ``all_reduce``.

``sent`` is counted at the collective call itself (a counting proxy for
``torch.distributed`` inside the hook modules), so the ratio is what went on the wire,
including PowerSGD's uncompressed 1-D tensors and its plain-allreduce warm-up steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd


@dataclass
class CommBytes:
    uncompressed: int = 0
    sent: int = 0

    @property
    def ratio(self) -> float:
        return self.uncompressed / self.sent if self.sent else 1.0


class _Counter:
    """Process-wide byte counter (one DDP model per training process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = CommBytes()

    def add(self, uncompressed: int = 0, sent: int = 0) -> None:
        with self._lock:
            self.bytes.uncompressed += uncompressed
            self.bytes.sent += sent

    def take(self) -> CommBytes:
        with self._lock:
            out, self.bytes = self.bytes, CommBytes()
        return out


COUNTER = _Counter()


class _CountingDist:
    """``torch.distributed`` as the hook modules see it, with ``all_reduce`` counting its bytes."""

    def __getattr__(self, name: str) -> Any:
        return getattr(dist, name)

    @staticmethod
    def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        COUNTER.add(sent=tensor.numel() * tensor.element_size())
        return dist.all_reduce(tensor, *args, **kwargs)


def _install_counting() -> None:
    for module in (default_hooks, powersgd):
        if not isinstance(module.dist, _CountingDist):
            module.dist = _CountingDist()


class Compression:
    """The hook attached to one DDP model, with its (checkpointable) state."""

    def __init__(self, kind: str, hook: Any, state: Any) -> None:
        self.kind = kind
        self.hook = hook
        self.state = state

    def counting_hook(self):
        """The function DDP calls per bucket (a plain function: DDP reads its name and annotations).

        PowerSGD issues its second all-reduce (Q) from a callback of the first (P); on gloo those
        callbacks can run in a different bucket order on each rank, and the ranks then exchange
        mismatched collectives ("Received data size doesn't match expected size", an abort a few
        dozen steps in). So on gloo each bucket's chain is finished before the next bucket's starts.
        """
        inner = self.hook
        in_order = self.kind == "powersgd" and dist.is_initialized() and dist.get_backend() == "gloo"

        def rayline_counting_hook(state, bucket):
            buffer = bucket.buffer()
            COUNTER.add(uncompressed=buffer.numel() * buffer.element_size())  # a plain allreduce's bytes
            future = inner(state, bucket)
            if in_order:
                future.wait()
            return future

        return rayline_counting_hook

    def state_dict(self) -> dict[str, Any]:
        """PowerSGD's error-feedback/warm-start memories and iteration (exact resume); {} otherwise."""
        if isinstance(self.state, powersgd.PowerSGDState):
            return {"powersgd": self.state.__getstate__()}
        return {}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if "powersgd" in data and isinstance(self.state, powersgd.PowerSGDState):
            group = self.state.process_group
            self.state.__setstate__(data["powersgd"])
            self.state.process_group = group


def attach(ddp_model: torch.nn.parallel.DistributedDataParallel, section: Any) -> Compression:
    """Register the hook for ``section.kind`` (none | fp16 | bf16 | powersgd) on ``ddp_model``."""
    _install_counting()
    kind = section.kind
    if kind == "none":
        compression = Compression(kind, default_hooks.allreduce_hook, None)
    elif kind == "fp16":
        compression = Compression(kind, default_hooks.fp16_compress_hook, None)
    elif kind == "bf16":
        compression = Compression(kind, default_hooks.bf16_compress_hook, None)
    elif kind == "powersgd":
        state = powersgd.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=section.rank,
            start_powerSGD_iter=section.start_iter,
            min_compression_rate=section.min_compression_rate,
            use_error_feedback=section.error_feedback,
            warm_start=section.warm_start,
            random_seed=0,
        )
        compression = Compression(kind, powersgd.powerSGD_hook, state)
    else:
        raise ValueError(f"unknown compression kind {kind!r}")
    ddp_model.register_comm_hook(compression.state, compression.counting_hook())
    return compression
