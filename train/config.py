"""The training job's one YAML config, validated before any worker starts.

``load_config(path)`` / ``parse_config(dict)`` turn YAML into a :class:`TrainConfig` or raise
:class:`TrainConfigError` naming the offending field (``optimizer.lr``, ``model.name``…).
Checks that need the outside world (does the dataset version exist?) live in
``train.data.resolve_data`` and run in the driver, also before workers start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.errors import ConfigError
from cluster.yamlfile import read_yaml_mapping
from models.registry import DATA_KIND, allowed_params, model_names


class TrainConfigError(ConfigError):
    """The training config is invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    compile: bool = Field(False, description="torch.compile the model (GPU workload; slow to warm up on CPU)")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in model_names():
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
        return name

    @model_validator(mode="after")
    def _params_known(self) -> ModelSection:
        unknown = set(self.params) - allowed_params(self.name)
        if unknown:
            raise _FieldError("model.params", f"unknown params {sorted(unknown)} for {self.name}; allowed: "
                              f"{sorted(allowed_params(self.name))}")
        return self


class SyntheticTokens(_Section):
    """A generated token stream (no downloads): a sparse random Markov chain, learnable but not trivial."""

    vocab_size: int = Field(256, ge=2)
    seq_len: int = Field(64, ge=2)
    train_sequences: int = Field(2048, ge=1)
    validation_sequences: int = Field(256, ge=1)
    successors: int = Field(4, ge=1, description="likely next tokens per token (sets the achievable loss)")


class DataSection(_Section):
    dataset: str | None = Field(None, description="ingest dataset name (a table, or a tokenized text dataset for gpt)")
    version: str | None = Field(None, description="dataset version, e.g. v3, or 'latest'")
    tokenizer: str | None = Field(None, description="token shards of this tokenizer id (gpt; default: the "
                                                    "version's CURRENT ones)")
    synthetic_tokens: SyntheticTokens | None = None
    shuffle_buffer: int = Field(256, ge=0, description="seeded local shuffle buffer per epoch (0: no shuffle)")


class OptimizerSection(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0)


class ScheduleSection(_Section):
    name: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class CompressionSection(_Section):
    kind: Literal["none", "fp16", "bf16", "powersgd"] = "none"
    rank: int = Field(2, ge=1, description="PowerSGD matrix approximation rank")
    start_iter: int = Field(2, ge=1, description="PowerSGD: plain allreduce before this iteration")
    error_feedback: bool = True
    warm_start: bool = True
    min_compression_rate: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _start_iter(self) -> CompressionSection:
        if self.kind == "powersgd" and (self.error_feedback or self.warm_start) and self.start_iter < 2:
            raise ValueError("start_iter must be >= 2 when error_feedback or warm_start is on (PowerSGD rule)")
        return self


class CheckpointSection(_Section):
    every_steps: int | None = Field(None, ge=1, description="also checkpoint every N steps (always at epoch end)")
    keep: int = Field(3, ge=1, description="checkpoints kept on disk (best by score_metric, latest always)")
    score_metric: str = "val_loss"
    score_mode: Literal["min", "max"] = "min"


class ScalingSection(_Section):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, gt=0)


class FailureSection(_Section):
    max_failures: int = Field(1, ge=-1, description="worker-group restarts allowed (-1: unlimited)")


class RegistrationSection(_Section):
    model_name: str = Field(min_length=1)
    metric: str = "val_loss"
    threshold: float | None = Field(None, description="register only if metric passes this")
    mode: Literal["min", "max"] = Field("min", description="min: metric <= threshold passes; max: >=")
    alias: str | None = Field(None, description="alias to point at the new version, e.g. challenger")


class TrainConfig(_Section):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    deepspeed: dict[str, Any] | None = Field(None, description="reserved for the DeepSpeed strategy")
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    batch_size: int = Field(64, ge=1, description="per worker")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in total")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float | None = Field(1.0, gt=0)
    compression: CompressionSection = Field(default_factory=CompressionSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    failure: FailureSection = Field(default_factory=FailureSection)
    registration: RegistrationSection | None = None
    log_every: int = Field(10, ge=1, description="steps between MLflow metric logs")
    eval_batches: int | None = Field(None, ge=1, description="cap on validation batches per evaluation")

    @property
    def backend(self) -> Literal["gloo", "nccl"]:
        return "nccl" if self.scaling.use_gpu else "gloo"

    @property
    def data_kind(self) -> str:
        return DATA_KIND[self.model.name]

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.compression.kind == "bf16" and self.backend == "gloo":
            raise _FieldError("compression.kind", "bf16 compression uses PyTorch's bf16_compress_hook, which needs "
                              "NCCL (a GPU run); use fp16 or powersgd on CPU/gloo")
        if self.compression.kind != "none" and self.strategy != "ddp":
            raise _FieldError("compression.kind", f"gradient compression hooks apply to the ddp strategy, "
                              f"not {self.strategy}")
        if self.data_kind == "tabular" and not self.data.dataset:
            raise _FieldError("data.dataset", f"model {self.model.name} needs an ingest dataset name")
        if self.data.dataset and self.data.synthetic_tokens is not None:
            raise _FieldError("data.synthetic_tokens", "give either data.dataset or data.synthetic_tokens, not both")
        if self.data.dataset and not self.data.version:
            raise _FieldError("data.version", f"dataset {self.data.dataset!r} needs a version (e.g. v1 or latest)")
        if self.data.tokenizer and self.data_kind != "tokens":
            raise _FieldError("data.tokenizer", f"model {self.model.name} reads tables, not token shards")
        if self.data_kind == "tokens" and self.data.synthetic_tokens is None and not self.data.dataset:
            self.data.synthetic_tokens = SyntheticTokens()
        if self.deepspeed is not None and self.strategy != "deepspeed":
            raise _FieldError("deepspeed", "a deepspeed section needs strategy: deepspeed")
        return self


class _FieldError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def parse_config(data: Any, source: str = "config") -> TrainConfig:
    """Validate a config mapping; the error names the first bad field and the value given."""
    if not isinstance(data, dict):
        raise TrainConfigError(f"{source}: expected a mapping of training options, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            raise TrainConfigError(f"{source}: invalid '{cause.field}': {cause.problem}") from None
        field = ".".join(str(p) for p in first["loc"]) or "config"
        message = first["msg"].removeprefix("Value error, ")
        given = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
        raise TrainConfigError(f"{source}: invalid '{field}': {message}{given}") from None


def load_config(path: str | Path) -> TrainConfig:
    return parse_config(read_yaml_mapping(path, TrainConfigError, "training config"), source=str(path))
