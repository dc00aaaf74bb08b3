"""DeepSpeed options of a training job, and the DeepSpeed JSON generated from them.

Users set a few validated options (``DeepSpeedOptions``) under the job config's ``deepspeed:``
section and may add a raw DeepSpeed JSON (``raw``). ``build_ds_config`` turns both plus the
job's own fields (batch size, learning rate, precision, clipping) into the dict passed to
``deepspeed.initialize``. Everything that can be wrong is found here, in the driver, before any
worker starts: removed optimizers, ZeRO++ options on the wrong stage, options that need
CUDA/NCCL on a CPU/gloo run, raw keys DeepSpeed does not know, and raw values that contradict
the job config. The last check is DeepSpeed's own config parser run on the final dict.
"""

from __future__ import annotations

import collections.abc
import copy
import functools
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.errors import ConfigError

Device = Literal["cpu", "cuda"]
Backend = Literal["gloo", "nccl"]
Precision = Literal["fp32", "bf16", "fp16"]

# Optimizers DeepSpeed removed; named here only to reject them with the reason.
REMOVED_OPTIMIZERS = {
    "onebitadam": "OneBitAdam",
    "zerooneadam": "ZeroOneAdam",
    "onebitlamb": "OneBitLamb",
}
REMOVED_REASON = "was removed from DeepSpeed in 0.19.7 (and needed a GPU/cupy before)"

# Job-config optimizer name → DeepSpeed optimizer type (all run without compiled ops on CPU;
# SGD is torch's, which DeepSpeed looks up by name).
OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}

# Defaults we pick but a raw JSON may override freely (they express no user choice).
SOFT_DEFAULTS: dict[str, Any] = {
    "steps_per_print": 10**9,  # DeepSpeed's own progress prints: off; we log through MLflow
    "wall_clock_breakdown": False,
    "zero_allow_untested_optimizer": True,
}


class DeepSpeedOptionError(ConfigError):
    """A DeepSpeed option is unavailable, contradictory or unknown (found before workers start)."""


class DeepSpeedOptions(BaseModel):
    """The ``deepspeed:`` section of a training config."""

    model_config = ConfigDict(extra="forbid")

    stage: int = Field(2, ge=0, le=3, description="ZeRO stage: 0 = plain data parallel through DeepSpeed")
    offload_optimizer: bool = Field(False, description="keep optimizer states in host memory (stage 2/3, CUDA)")
    offload_pin_memory: bool = True
    zero_quantized_weights: bool = Field(False, description="ZeRO++ qwZ: int8 weight all-gather (stage 3, NCCL)")
    zero_quantized_gradients: bool = Field(False, description="ZeRO++ qgZ: int4 gradient reduce (stage 3, NCCL)")
    zero_hpz_partition_size: int = Field(1, ge=1, description="ZeRO++ hpZ: secondary weight partition size")
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float | None = Field(None, ge=0, description="None: the job config's grad_clip")
    optimizer: str | None = Field(None, description="None: the job config's optimizer")
    raw: dict[str, Any] = Field(default_factory=dict, description="DeepSpeed JSON merged over the generated one")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str | None) -> str | None:
        if name is not None:
            _check_optimizer_name(name)
        return name


def _check_optimizer_name(name: str) -> None:
    key = name.lower().replace("_", "").replace("-", "")
    if key in REMOVED_OPTIMIZERS:
        raise DeepSpeedOptionError(f"optimizer {REMOVED_OPTIMIZERS[key]} {REMOVED_REASON}; use adamw")
    if key not in OPTIMIZERS and key not in {v.lower() for v in OPTIMIZERS.values()}:
        raise DeepSpeedOptionError(f"optimizer {name!r} is not supported with DeepSpeed; use {sorted(OPTIMIZERS)}")


@dataclass(frozen=True)
class Effective:
    """What a final DeepSpeed dict asks for, whichever of options or raw JSON set it."""

    stage: int
    offload_optimizer: bool
    offload_param: bool
    quantized_weights: bool
    quantized_gradients: bool
    hpz: int
    precision: Precision
    optimizer: str | None

    @classmethod
    def of(cls, ds: dict[str, Any]) -> Effective:
        zero = ds.get("zero_optimization") or {}
        offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none")
        offload_param = (zero.get("offload_param") or {}).get("device", "none")
        precision: Precision = "fp32"
        if (ds.get("bf16") or ds.get("bfloat16") or {}).get("enabled"):
            precision = "bf16"
        elif (ds.get("fp16") or {}).get("enabled"):
            precision = "fp16"
        return cls(
            stage=int(zero.get("stage", 0)),
            offload_optimizer=offload_opt not in (None, "none"),
            offload_param=offload_param not in (None, "none"),
            quantized_weights=bool(zero.get("zero_quantized_weights")
                                   or zero.get("zero_quantized_nontrainable_weights")),
            quantized_gradients=bool(zero.get("zero_quantized_gradients")),
            hpz=int(zero.get("zero_hpz_partition_size", 1)),
            precision=precision,
            optimizer=(ds.get("optimizer") or {}).get("type"),
        )


def check_requirements(eff: Effective, device: Device, backend: Backend) -> None:
    """Reject what DeepSpeed removed, what contradicts itself, and what this device/backend cannot run."""
    if eff.optimizer is not None:
        _check_optimizer_name(eff.optimizer)
    zeropp = [n for n, on in (("zero_quantized_weights", eff.quantized_weights),
                              ("zero_quantized_gradients", eff.quantized_gradients),
                              ("zero_hpz_partition_size>1", eff.hpz > 1)) if on]
    if zeropp and eff.stage != 3:
        raise DeepSpeedOptionError(f"{', '.join(zeropp)} (ZeRO++) only apply to ZeRO stage 3, not stage {eff.stage}")
    if eff.offload_optimizer and eff.stage < 2:
        raise DeepSpeedOptionError(f"offload_optimizer needs ZeRO stage 2 or 3, not stage {eff.stage}")
    if eff.offload_param and eff.stage != 3:
        raise DeepSpeedOptionError(f"offload_param needs ZeRO stage 3, not stage {eff.stage}")
    needs_cuda = {
        "zero_quantized_weights": (eff.quantized_weights, "its int8 quantizer kernels are CUDA ops"),
        "zero_quantized_gradients": (eff.quantized_gradients, "its int4 quantizer kernels are CUDA ops"),
        "zero_hpz_partition_size>1": (eff.hpz > 1, "hpZ keeps a secondary weight partition in GPU memory"),
        "offload_optimizer": (eff.offload_optimizer, "it moves states off the GPU and builds the cpu_adam op; "
                                                     "on CPU they already live in host memory"),
        "offload_param": (eff.offload_param, "it moves parameters off the GPU"),
        "fp16": (eff.precision == "fp16", "DeepSpeed's fp16 loss scaling is for GPUs; use bf16 on CPU"),
    }
    for name, (on, why) in needs_cuda.items():
        if on and device != "cuda":
            raise DeepSpeedOptionError(f"{name} needs a CUDA device ({why}); this run is on {device}")
    needs_nccl = {"zero_quantized_weights": eff.quantized_weights, "zero_quantized_gradients": eff.quantized_gradients}
    for name, on in needs_nccl.items():
        if on and backend != "nccl":
            raise DeepSpeedOptionError(f"{name} needs the NCCL backend; this run uses {backend}")


def validate_ds_options(options: DeepSpeedOptions, device: Device, backend: Backend) -> None:
    """Check the options (and the raw JSON's zero/optimizer sections) for this device and backend."""
    raw_optimizer = (options.raw.get("optimizer") or {}).get("type")
    if raw_optimizer is not None:
        _check_optimizer_name(raw_optimizer)
    options = resolved(options)
    merged = deep_merge(options.raw, {"zero_optimization": _zero_section(options, device)}, strict=True)
    if options.optimizer is not None:
        merged.setdefault("optimizer", {"type": options.optimizer})
    check_requirements(Effective.of(merged), device, backend)


# Option fields a raw JSON may set instead (when the option itself was left at its default).
_RAW_PATHS = {
    "stage": ("zero_optimization", "stage"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "gradient_clipping": ("gradient_clipping",),
}


def resolved(options: DeepSpeedOptions) -> DeepSpeedOptions:
    """Options with raw-JSON values adopted for fields the user did not set explicitly."""
    updates: dict[str, Any] = {}
    for field, path in _RAW_PATHS.items():
        node: Any = options.raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and field not in options.model_fields_set:
            updates[field] = node
    if not updates:
        return options
    try:
        return DeepSpeedOptions.model_validate({**options.model_dump(exclude_unset=True), **updates})
    except ValueError as err:
        raise DeepSpeedOptionError(f"raw DeepSpeed JSON: {' '.join(str(err).split())[:300]}") from err


def build_ds_config(
    options: DeepSpeedOptions,
    *,
    micro_batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.0,
    precision: Precision = "fp32",
    grad_clip: float | None = None,
    schedule: Literal["constant", "cosine", "linear"] = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    total_steps: int | None = None,
    world_size: int,
    device: Device,
    backend: Backend,
) -> dict[str, Any]:
    """The DeepSpeed dict for ``deepspeed.initialize``: generated fields, raw JSON merged, all validated."""
    validate_ds_options(options, device, backend)
    options = resolved(options)
    opt_name = options.optimizer or optimizer
    _check_optimizer_name(opt_name)
    ga = options.gradient_accumulation_steps
    clip = options.gradient_clipping if options.gradient_clipping is not None else grad_clip
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": ga,
        "train_batch_size": micro_batch_size * ga * world_size,
        "gradient_clipping": float(clip or 0.0),
        "zero_optimization": _zero_section(options, device),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "optimizer": _optimizer(opt_name, learning_rate, weight_decay, betas, momentum, device),
    }
    scheduler = _scheduler(schedule, learning_rate, warmup_steps, min_lr_ratio, total_steps)
    if scheduler is not None:
        generated["scheduler"] = scheduler
    config = deep_merge(deep_merge(SOFT_DEFAULTS, options.raw, strict=False), generated, strict=True)
    effective = Effective.of(config)
    check_requirements(effective, device, backend)
    if effective.hpz > 1 and world_size % effective.hpz:
        raise DeepSpeedOptionError(f"zero_hpz_partition_size {effective.hpz} must divide the {world_size} workers")
    check_with_deepspeed(config, world_size)
    return config


def _zero_section(options: DeepSpeedOptions, device: Device) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": options.stage}
    if options.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": options.offload_pin_memory}
    if options.zero_quantized_weights:
        zero["zero_quantized_weights"] = True
    if options.zero_quantized_gradients:
        zero["zero_quantized_gradients"] = True
    if options.zero_hpz_partition_size > 1:
        zero["zero_hpz_partition_size"] = options.zero_hpz_partition_size
    if options.stage >= 2 and device == "cuda":
        zero.setdefault("overlap_comm", True)
    return zero


def _optimizer(name: str, lr: float, weight_decay: float, betas: tuple[float, float], momentum: float,
               device: Device) -> dict[str, Any]:
    kind = OPTIMIZERS.get(name.lower(), name)
    if kind == "SGD":
        return {"type": kind, "params": {"lr": lr, "weight_decay": weight_decay, "momentum": momentum}}
    # torch_adam: torch's Adam(W) instead of FusedAdam, which is a compiled op (~70 s) on CPU.
    return {"type": kind, "params": {"lr": lr, "weight_decay": weight_decay, "betas": list(betas),
                                     "torch_adam": device != "cuda"}}


def _scheduler(kind: str, lr: float, warmup: int, min_lr_ratio: float, total: int | None) -> dict[str, Any] | None:
    """The job's schedule (constant / linear / cosine, with linear warmup) as a DeepSpeed scheduler."""
    warm = max(warmup, 1)
    if kind == "constant" or total is None or total <= warm:
        if warmup <= 0:
            return None
        return {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                               "warmup_num_steps": warm, "warmup_type": "linear"}}
    if kind == "linear":
        if min_lr_ratio > 0.0:
            raise DeepSpeedOptionError("schedule linear with min_lr_ratio > 0 has no DeepSpeed scheduler "
                                       "(WarmupDecayLR decays to 0); use cosine or min_lr_ratio: 0")
        return {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                                    "warmup_num_steps": warm, "warmup_type": "linear",
                                                    "total_num_steps": total}}
    return {"type": "WarmupCosineLR", "params": {"total_num_steps": total, "warmup_num_steps": warm,
                                                 "warmup_min_ratio": 0.0, "cos_min_ratio": min_lr_ratio}}


def deep_merge(base: dict[str, Any], over: dict[str, Any], *, strict: bool, path: str = "") -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; with ``strict`` a differing leaf in ``base`` is a contradiction.

    Strict merging is how the job config wins over a raw JSON: raw may add keys the job config
    does not set, but not change what it says (batch size, stage, precision, ...).
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, strict=strict, path=where)
        elif strict and key in out and out[key] != value:
            raise DeepSpeedOptionError(
                f"raw DeepSpeed JSON sets {where}={out[key]!r} but the job config says {value!r}; "
                f"set it in one place")
        else:
            out[key] = copy.deepcopy(value)
    return out


class _KeyRecorder(dict):
    """A dict that records which keys DeepSpeed's parser looks up (copies share the record)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[str] = set()

    def __getitem__(self, key: Any) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self):  # type: ignore[override]
        return collections.abc.KeysView(self)


@functools.cache
def known_top_level_keys() -> frozenset[str]:
    """Top-level keys DeepSpeed 0.19.8 understands: what its config parser reads, plus its key constants."""
    from deepspeed.runtime import constants
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = _KeyRecorder({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1})
    DeepSpeedConfig(probe)
    named = {v for k, v in vars(constants).items()
             if k.isupper() and isinstance(v, str) and v.isidentifier() and v == v.lower()}
    return frozenset(k for k in probe.seen | named if isinstance(k, str))


def check_with_deepspeed(config: dict[str, Any], world_size: int) -> None:
    """Run DeepSpeed's own parser on ``config`` (unknown keys, removed features, zero schema, batch sizes)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    unknown = sorted(set(config) - known_top_level_keys())
    if unknown:
        raise DeepSpeedOptionError(f"unknown DeepSpeed config keys {unknown} (not in DeepSpeed's config schema)")
    # DeepSpeed derives the world size from the process group (absent in the driver): let it derive
    # train_batch_size too; ours is micro x accumulation x world_size by construction (strict merge).
    probe = {k: v for k, v in copy.deepcopy(config).items() if k != "train_batch_size"}
    try:
        DeepSpeedConfig(probe)
    except Exception as err:  # DeepSpeed raises AssertionError, ValueError, pydantic and its own errors
        message = " ".join(str(err).split())[:400]
        raise DeepSpeedOptionError(f"DeepSpeed rejects the config: {message}") from err
