"""Model factories by name: a training config says ``model.name`` and ``model.params``.

A factory takes the user's params plus what the data dictates (``DataSpec``: input/output
sizes for tables, vocabulary and context length for tokens) and returns a plain
``nn.Module``. New models are one entry in ``FACTORIES``. GPT's ``seq_len`` and ``vocab_size``
may also be written in its params (the context length to pack a token dataset into; the
vocabulary the user expects): the training job checks them against the data before any worker
starts (``train.data``), and the data's values are what the model gets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from torch import nn

from models.gpt import GPT, GPTConfig
from models.tabular import TabularMLP, TabularMLPConfig


@dataclass(frozen=True)
class DataSpec:
    """What a model must know about its data (filled by the training job, not the user)."""

    kind: Literal["tabular", "tokens"]
    num_inputs: int = 0
    num_outputs: int = 0
    vocab_size: int = 0
    seq_len: int = 0


def _tabular_mlp(params: Mapping[str, Any], spec: DataSpec) -> nn.Module:
    _require(spec, "tabular", "tabular_mlp")
    options = dict(params)
    if "hidden" in options:
        options["hidden"] = tuple(options["hidden"])
    return TabularMLP(TabularMLPConfig(num_inputs=spec.num_inputs, num_outputs=spec.num_outputs, **options))


def _gpt(params: Mapping[str, Any], spec: DataSpec) -> nn.Module:
    _require(spec, "tokens", "gpt")
    return GPT(GPTConfig(**{**params, "vocab_size": spec.vocab_size, "seq_len": spec.seq_len}))


FACTORIES: dict[str, tuple[Callable[[Mapping[str, Any], DataSpec], nn.Module], type, frozenset[str]]] = {
    "tabular_mlp": (_tabular_mlp, TabularMLPConfig, frozenset({"num_inputs", "num_outputs"})),
    "gpt": (_gpt, GPTConfig, frozenset()),
}
DATA_KIND = {"tabular_mlp": "tabular", "gpt": "tokens"}


def model_names() -> list[str]:
    return sorted(FACTORIES)


def allowed_params(name: str) -> set[str]:
    """Params a user may set for ``name`` (the config dataclass minus what the data dictates)."""
    _, config_cls, from_data = FACTORIES[name]
    return {f.name for f in fields(config_cls)} - from_data


def build_model(name: str, params: Mapping[str, Any], spec: DataSpec) -> nn.Module:
    if name not in FACTORIES:
        raise KeyError(f"unknown model {name!r}; known: {model_names()}")
    factory, _, _ = FACTORIES[name]
    return factory(params, spec)


def _require(spec: DataSpec, kind: str, name: str) -> None:
    if spec.kind != kind:
        raise ValueError(f"model {name!r} needs {kind} data, got {spec.kind}")
