"""Distributed strategies: how a plain model + optimizer become a data-parallel training step.

torchtitan's rule: models know nothing of DDP or DeepSpeed; a strategy wraps them from the
outside. The train loop only calls this interface, so adding DeepSpeed is one more class:

- ``setup(model, optimizer)``: wrap for distributed training (device placement included);
- ``autocast()`` / ``backward(loss)`` per micro-batch / ``step(grad_clip)``: one optimizer step
  over ``accumulation_steps(config)`` micro-batches, precision aware;
- ``save(directory, rank)`` / ``load(directory, rank)``: this strategy's part of a checkpoint
  (model, optimizer, loss scaler, communication state) — the checkpoint component does the rest;
  every strategy writes a plain, full ``state_dict`` to ``MODEL_FILE`` from rank 0 only (no other
  rank builds a full copy), which is what gets exported to MLflow — in ``save`` or, where the
  full model exists only once every rank's files are stored, in ``export`` (collective, after
  Ray Train stored the checkpoint);
- ``comm_bytes()``: bytes the last steps would send uncompressed vs sent.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from train import compression
from train.checkpoint import MODEL_FILE
from train.config import TrainConfig, TrainConfigError

OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def rank_file(stem: str, rank: int) -> str:
    return f"{stem}_rank{rank}.pt"


class Strategy(ABC):
    """One way to run data-parallel steps; see the module docstring for the contract."""

    name: str

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model: nn.Module | None = None  # what the loop calls forward on (possibly wrapped)
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def accumulation_steps(cls, config: TrainConfig) -> int:
        """Micro-batches per optimizer step (the loop calls ``backward`` that often, then ``step`` once)."""
        return 1

    @property
    @abstractmethod
    def raw_model(self) -> nn.Module:
        """The unwrapped model (for evaluation and export)."""

    @abstractmethod
    def setup(self, model: nn.Module, optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer]) -> None: ...

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self, grad_clip: float | None) -> float:
        """Clip, step and zero the gradients; returns the gradient norm before clipping."""

    @abstractmethod
    def save(self, directory: Path, rank: int) -> list[str]:
        """Write this rank's files into ``directory``; returns their names."""

    @abstractmethod
    def load(self, directory: Path, rank: int) -> None: ...

    def after_evaluation(self) -> None:
        """Free what evaluation's forwards left behind (collective where the strategy needs it)."""
        return None

    def export(self, stored_url: str, rank: int) -> None:
        """After every rank's ``save`` is stored at ``stored_url``: write ``MODEL_FILE`` there if ``save`` did not."""
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def comm_bytes(self) -> compression.CommBytes:
        return compression.CommBytes()


def _ray_prepare(model: nn.Module) -> nn.Module:
    import ray.train.torch

    return ray.train.torch.prepare_model(model, parallel_strategy="ddp")


def plain_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without Ray (torchrun baseline); Ray Train's ``prepare_model`` does the same inside Ray."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return model.to(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model.to(device), device_ids=device_ids)


class DDPStrategy(Strategy):
    """PyTorch DDP (gloo on CPU, NCCL on GPU), wrapped by Ray Train's ``prepare_model``.

    Optional gradient compression is a DDP communication hook; fp16 precision uses a GradScaler.
    """

    name = "ddp"

    def __init__(self, config: TrainConfig, device: torch.device,
                 wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        super().__init__(config, device)
        self._wrap = wrap or _ray_prepare
        self._raw: nn.Module | None = None
        self.compression: compression.Compression | None = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    @property
    def raw_model(self) -> nn.Module:
        assert self._raw is not None, "setup() first"
        return self._raw

    def setup(self, model: nn.Module, optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
        self._raw = model
        wrapped = self._wrap(model)
        if isinstance(wrapped, nn.parallel.DistributedDataParallel):
            self.compression = compression.attach(wrapped, self.config.compression)
        self.optimizer = optimizer_factory(model)
        self.model = torch.compile(wrapped) if self.config.model.compile else wrapped

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, grad_clip: float | None) -> float:
        assert self.optimizer is not None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def comm_bytes(self) -> compression.CommBytes:
        return compression.COUNTER.take() if self.compression else compression.CommBytes()

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.raw_model.state_dict().items()}

    def save(self, directory: Path, rank: int) -> list[str]:
        assert self.optimizer is not None
        names = []
        if rank == 0:  # DDP replicas are identical: one copy of model/optimizer/scaler
            torch.save(self.export_state_dict(), directory / MODEL_FILE)
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
            torch.save(self.scaler.state_dict(), directory / SCALER_FILE)
            names += [MODEL_FILE, OPTIMIZER_FILE, SCALER_FILE]
        comm = self.compression.state_dict() if self.compression else {}
        if comm:  # PowerSGD memories differ per rank
            torch.save(comm, directory / rank_file("comm", rank))
            names.append(rank_file("comm", rank))
        return names

    def load(self, directory: Path, rank: int) -> None:
        assert self.optimizer is not None
        self.raw_model.load_state_dict(torch.load(directory / MODEL_FILE, map_location=self.device))
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=self.device))
        self.scaler.load_state_dict(torch.load(directory / SCALER_FILE))
        comm_path = directory / rank_file("comm", rank)
        if self.compression and comm_path.is_file():
            self.compression.load_state_dict(torch.load(comm_path, weights_only=False))


STRATEGIES: dict[str, type[Strategy]] = {"ddp": DDPStrategy}


def strategy_class(config: TrainConfig) -> type[Strategy]:
    """The class for ``config.strategy``; fails in the driver when it is not available (yet)."""
    if config.strategy == "deepspeed" and "deepspeed" not in STRATEGIES:  # imports DeepSpeed only when asked
        from train.deepspeed_strategy import DeepSpeedStrategy

        STRATEGIES["deepspeed"] = DeepSpeedStrategy
    cls = STRATEGIES.get(config.strategy)
    if cls is None:
        raise TrainConfigError(f"invalid 'strategy': {config.strategy!r} is not available here; "
                               f"available: {sorted(STRATEGIES)}")
    check_config = getattr(cls, "check_config", None)  # strategy-specific driver-side validation
    if check_config is not None:
        check_config(config)
    return cls

