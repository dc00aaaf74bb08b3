"""Per-rank memory report: what one training process holds, so ZeRO's saving shows per run.

Works for any strategy: a plain torch optimizer (DDP) or a DeepSpeed engine's optimizer
(ZeRO wrappers hold an inner torch optimizer over their partitions, reached through
``.optimizer``). Counts come from the tensors each rank actually holds, not from formulas:
under ZeRO-3 a parameter's own storage is its partition (``ds_tensor``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import re
import resource
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
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


_PEAK_BEFORE_RESETS = 0  # the process's true peak, kept across rss_window's resets of the kernel's mark


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return max(_PEAK_BEFORE_RESETS, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


@dataclass
class RssWindow:
    """Peak RSS growth of this process inside a ``with rss_window()`` block (after it closes)."""

    start_bytes: int = 0
    peak_bytes: int = 0

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


@contextlib.contextmanager
def rss_window() -> Iterator[RssWindow]:
    """Measure the peak resident set reached inside the block, above the memory live at its start.

    Garbage in reference cycles would be freed whenever Python's cyclic collector next runs, inside
    the block too, and the block's allocations would reuse its pages unseen; ``gc.collect`` frees it
    first. glibc keeps freed memory resident for reuse, which would hide new allocations;
    ``malloc_trim`` hands it back, so the RSS at the start is what is live. Linux keeps one high-water mark
    per process; writing 5 to ``/proc/self/clear_refs`` resets it to the current RSS, so the mark
    read at the end is this block's own peak (exact, not sampled). ``peak_rss_bytes`` keeps
    reporting the whole process's peak. Where either is unavailable, growth reads 0.
    """
    global _PEAK_BEFORE_RESETS
    window = RssWindow()
    _PEAK_BEFORE_RESETS = peak_rss_bytes()
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    start = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        start = None
    window.start_bytes = (start or 0) * 1024
    try:
        yield window
    finally:
        peak = _status_kib("VmHWM") if start is not None else None
        window.peak_bytes = peak * 1024 if peak is not None else window.start_bytes


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


def rank_metrics(model: torch.nn.Module, optimizer: Any, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Every rank's report (plus ``extra`` figures) as ``mem_rank{r}_*`` metrics (collective: every rank calls it)."""
    import torch.distributed as dist

    mine = {**memory_report(model, optimizer).metrics(), **{f"mem_{k}": float(v) for k, v in (extra or {}).items()}}
    if not dist.is_initialized():
        return {k.replace("mem_", "mem_rank0_", 1): v for k, v in mine.items()}
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return {k.replace("mem_", f"mem_rank{r}_", 1): v for r, metrics in enumerate(every) for k, v in metrics.items()}
