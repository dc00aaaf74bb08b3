"""DeepSpeed ZeRO as a training strategy: ``deepspeed.initialize`` inside the Ray Train function.

The model stays a plain ``nn.Module``; this class wraps it from the outside like ``DDPStrategy``
and speaks the same interface to the loop and to the one checkpoint component:

- setup: the DeepSpeed JSON comes from ``ds_config_for`` (the job config + its ``deepspeed:``
  section, validated in the driver by ``check_config`` before any worker starts); DeepSpeed
  builds the optimizer from it (so CPU offload gets DeepSpeed's CPU Adam on GPUs), and reuses
  the process group Ray Train created (gloo on CPU, NCCL on GPU);
- backward / step: ``engine.backward`` and ``engine.step`` (clipping, loss scaling and ZeRO's
  reduce-scatter / all-gather happen in there); under gradient accumulation the loop calls
  ``backward`` once per micro-batch and ``step`` once per optimizer step, and DeepSpeed's own
  micro-step count advances inside ``backward``;
- save: every rank writes its ZeRO shard with ``engine.save_checkpoint`` under ``deepspeed/``
  of its own staging directory (Ray Train merges the ranks' files into one stored checkpoint);
- export, the plain full ``model.pt`` every strategy writes: at ZeRO 0–2 every rank holds the
  whole module, so rank 0 writes it in ``save``; at ZeRO-3, once every rank's shards are stored
  (one barrier), rank 0 alone builds the fp32 state_dict from those files (``train.consolidate``,
  DeepSpeed's ``zero_to_fp32``) and writes it into the stored checkpoint (local or object
  storage). No rank gathers parameters over the network for it, so the other ranks' memory does
  not grow at a checkpoint (``save_16bit_model`` all-gathered each layer on every rank: rank 1
  grew by about half the model's size);
- load: ``engine.load_checkpoint``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from cluster import files
from train.checkpoint import CheckpointError, write_export
from train.config import TrainConfig
from train.consolidate import consolidated_state_dict_at
from train.deepspeed_config import DeepSpeedOptionError, DeepSpeedOptions, build_ds_config, resolved
from train.memory import innermost_optimizer
from train.strategy import MODEL_FILE, Strategy

log = logging.getLogger(__name__)

DS_DIR = "deepspeed"  # inside a checkpoint: DeepSpeed's own layout (latest, <tag>/…_states.pt)
DS_TAG = "shards"  # one DeepSpeed tag per checkpoint directory (every report is a new directory)


def options_of(config: TrainConfig) -> DeepSpeedOptions:
    """The validated ``deepspeed:`` section (an absent section means the defaults: ZeRO stage 2)."""
    try:
        return DeepSpeedOptions.model_validate(config.deepspeed or {})
    except ValueError as err:  # pydantic's ValidationError
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
        field = ".".join(str(p) for p in first["loc"])
        raise DeepSpeedOptionError(f"invalid 'deepspeed.{field}': {first['msg']}") from None


def device_and_backend(config: TrainConfig) -> tuple[str, str]:
    return ("cuda" if config.scaling.use_gpu else "cpu"), config.backend


def ds_config_for(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this job (validated; raises DeepSpeedOptionError with the reason)."""
    device, backend = device_and_backend(config)
    return build_ds_config(
        options_of(config),
        micro_batch_size=config.batch_size,
        learning_rate=config.optimizer.lr,
        weight_decay=config.optimizer.weight_decay,
        optimizer=config.optimizer.name,
        betas=config.optimizer.betas,
        momentum=config.optimizer.momentum,
        precision=config.precision,
        grad_clip=config.grad_clip,
        schedule="constant",  # the loop owns the LR schedule (the same one DDP uses), not DeepSpeed
        world_size=world_size,
        device=device,  # type: ignore[arg-type]
        backend=backend,  # type: ignore[arg-type]
    )


def skip_shm_comm_op() -> None:
    """Do not compile DeepSpeed's ``deepspeed_shm_comm`` op (~45 s, ~3 GiB of compiler) on CPU.

    DeepSpeed builds it when its torch backend starts, but uses it only for
    ``inference_all_reduce`` (tensor-parallel inference), never in ZeRO training; marking it
    incompatible in DeepSpeed's op table (a cached dict it documents as editable) skips the build.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedStrategy(Strategy):
    """ZeRO stage 0–3 through a DeepSpeed engine (see the module docstring)."""

    name = "deepspeed"

    def __init__(self, config: TrainConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.engine: Any = None
        self.ds_config: dict[str, Any] = {}

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Driver-side: everything wrong with the DeepSpeed options fails here, before workers start."""
        ds_config_for(config, world_size=config.scaling.num_workers)

    @classmethod
    def accumulation_steps(cls, config: TrainConfig) -> int:
        return resolved(options_of(config)).gradient_accumulation_steps

    @property
    def raw_model(self) -> nn.Module:
        assert self.engine is not None, "setup() first"
        return self.engine.module

    @property
    def stage(self) -> int:
        return options_of(self.config).stage  # set in one place only (check_config refuses a raw override)

    def setup(self, model: nn.Module, optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
        """Build the engine; DeepSpeed makes the optimizer from the config (``optimizer_factory`` is unused)."""
        import deepspeed
        import torch.distributed as dist

        args = None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # DeepSpeed would pick the GPU by LOCAL_RANK; use the one Ray Train assigned to this worker.
            args = SimpleNamespace(device_rank=torch.cuda.current_device())
        else:
            skip_shm_comm_op()
        world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.ds_config = ds_config_for(self.config, world_size)
        deepspeed.init_distributed(dist_backend=self.config.backend)  # wraps Ray's process group
        self.engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters(),
                                                    config=self.ds_config)
        # The loop's LR schedule drives the torch optimizer under DeepSpeed's ZeRO wrapper.
        self.optimizer = innermost_optimizer(self.engine.optimizer)
        if self.config.model.compile:
            self.engine.compile()  # DeepSpeed's own torch.compile integration (keeps ZeRO hooks)
        self.model = self.engine
        log.info("deepspeed engine ready", extra={"zero_stage": self.stage, "world_size": world_size,
                                                   "precision": self.config.precision})

    def backward(self, loss: torch.Tensor) -> None:
        """``engine.backward``; before the last micro-batch of a step, DeepSpeed's micro-step too
        (``engine.step`` off the accumulation boundary only counts; the optimizer steps in ``step``)."""
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self, grad_clip: float | None) -> float:
        """``engine.step`` clips with the config's ``gradient_clipping`` (set from ``grad_clip``)."""
        assert self.engine.is_gradient_accumulation_boundary(), "step() after the step's last micro-batch only"
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: Path, rank: int) -> list[str]:
        """Every rank writes its DeepSpeed shard (collective); rank 0 the module below ZeRO-3 (else ``export``)."""
        ds_dir = directory / DS_DIR
        before = {p for p in directory.rglob("*") if p.is_file()}
        self.engine.save_checkpoint(str(ds_dir), tag=DS_TAG, save_latest=True)
        if self.stage < 3 and rank == 0:  # the module's own weights, in its dtype
            torch.save({k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}, directory / MODEL_FILE)
        written = sorted(p for p in directory.rglob("*") if p.is_file() and p not in before)
        return [str(p.relative_to(directory)) for p in written]

    def after_evaluation(self) -> None:
        """ZeRO-3: partition the parameters again (every rank). After a training step DeepSpeed's prefetcher
        keeps each parameter gathered by a forward-only pass until its last use in the recorded
        forward+backward trace, which evaluation never reaches, so every rank would hold the whole
        model through the checkpoint save and into the next step."""
        if self.stage == 3:
            self.engine.empty_partition_cache()

    def export(self, stored_url: str, rank: int) -> None:
        """ZeRO-3: rank 0 consolidates the stored shards into ``model.pt`` once every rank's upload is done
        (collective)."""
        import torch.distributed as dist

        if self.stage < 3:
            return
        if dist.is_initialized():
            dist.barrier()  # each rank's report returns once its own files are stored
        if rank == 0:
            write_export(stored_url, consolidated_state_dict_at(files.join(stored_url, DS_DIR), tag=DS_TAG))

    def load(self, directory: Path, rank: int) -> None:
        ds_dir = directory / DS_DIR
        load_path, _ = self.engine.load_checkpoint(str(ds_dir), load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"no DeepSpeed checkpoint under {ds_dir}")
