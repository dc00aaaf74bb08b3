"""Per-rank memory report: what one training process holds, so ZeRO's saving shows per run.

Works for any strategy: a plain torch optimizer (DDP) or a DeepSpeed engine's optimizer
(ZeRO wrappers hold an inner torch optimizer over their partitions, reached through
``.optimizer``). Counts come from the tensors each rank actually holds, not from formulas:
under ZeRO-3 a parameter's own storage is its partition (``ds_tensor``).
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class MemoryReport:
    peak_rss_bytes: int  # this process's peak resident set (host memory)
    gpu_peak_allocated_bytes: int  # torch's peak allocated CUDA memory; 0 on CPU
    param_bytes: int  # model parameters held by this rank (its partition under ZeRO-3)
    optimizer_state_bytes: int  # optimizer moments (exp_avg, exp_avg_sq, ...) + fp32 master partitions
    optimizer_moment_bytes: int  # the moments alone
    master_weight_bytes: int  # fp32 master copies the optimizer keeps apart from the model parameters

    def metrics(self, prefix: str = "mem_") -> dict[str, float]:
        """Flat ``{name: value}`` for MLflow / ``ray.train.report``."""
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16), or the optimizer itself."""
    seen: set[int] = set()
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this rank holds; a ZeRO-3 parameter counts its local partition."""
    total = 0
    for p in model.parameters():
        local = getattr(p, "ds_tensor", None)
        total += _bytes(local if local is not None else p)
    return total


def optimizer_bytes(model: torch.nn.Module, optimizer: Any) -> tuple[int, int]:
    """(moment bytes, master-weight bytes) held by this rank's optimizer."""
    inner = innermost_optimizer(optimizer)
    if inner is None:
        return 0, 0
    model_params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    moments = 0
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0 and id(value) not in seen:
                seen.add(id(value))
                moments += _bytes(value)
    master = 0
    # Masters are the optimizer's params; ZeRO-3 swaps them into param_groups only during step(),
    # but they stay the keys of its state.
    candidates = [p for group in inner.param_groups for p in group["params"]] + list(inner.state)
    for p in candidates:
        if torch.is_tensor(p) and id(p) not in model_params and id(p) not in seen:
            seen.add(id(p))
            master += _bytes(p)
    return moments, master


def memory_report(model: torch.nn.Module, optimizer: Any) -> MemoryReport:
    """Measure now; call after at least one optimizer step (moments are created lazily)."""
    moments, master = optimizer_bytes(model, optimizer)
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0
    return MemoryReport(
        peak_rss_bytes=peak_rss_bytes(),
        gpu_peak_allocated_bytes=int(gpu),
        param_bytes=param_bytes(model),
        optimizer_state_bytes=moments + master,
        optimizer_moment_bytes=moments,
        master_weight_bytes=master,
    )


def rank_metrics(model: torch.nn.Module, optimizer: Any) -> dict[str, float]:
    """Every rank's report as ``mem_rank{r}_*`` metrics (collective: every rank must call it)."""
    import torch.distributed as dist

    mine = memory_report(model, optimizer).metrics()
    if not dist.is_initialized():
        return {k.replace("mem_", "mem_rank0_", 1): v for k, v in mine.items()}
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return {k.replace("mem_", f"mem_rank{r}_", 1): v for r, metrics in enumerate(every) for k, v in metrics.items()}
