"""Preprocessing shared by training and serving, built from a dataset manifest.

Ingest freezes categorical vocabularies and stores normalisation statistics in the
dataset's ``manifest.json`` (it never applies them silently). Training and serving
both build a :class:`Preprocessing` from that manifest, so a request is encoded and
scaled with exactly the numbers the model was trained with.

Manifest keys used here (written by ``ingest``)::

    target: "label"                      # label column
    task: "classification" | "regression"
    classes: ["a", "b", ...]             # classification: label vocabulary, target stored as index
    features:                            # raw input fields, in order
      - {name: age, kind: numeric, minimum: 18, maximum: 100, integer: true}   # the contract's rules
      - {name: charges, kind: numeric, clip: [0.0, 180.5]}   # training clipped outliers to these bounds
      - {name: color, kind: categorical, encoding: onehot, vocabulary: [red, green],
         columns: ["color=red", "color=green"]}
      - {name: city, kind: categorical, encoding: label, vocabulary: [...], columns: [city]}
    normalization: {age: {mean: 40.1, std: 12.3}, ...}   # per numeric model-input column
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32: beyond this is inf


class InputError(ValueError):
    """A request field breaks a rule (required, type, finite, range, allowed); ``field`` and ``rule`` name it."""

    def __init__(self, field_name: str, problem: str, rule: str = "type") -> None:
        super().__init__(f"field '{field_name}': {problem}")
        self.field = field_name
        self.problem = problem
        self.rule = rule


@dataclass(frozen=True)
class Feature:
    """One raw input field, with the contract rules the training data was held to (serving holds requests to them)."""

    name: str
    kind: Literal["numeric", "categorical"]
    encoding: Literal["none", "label", "onehot"] = "none"
    vocabulary: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    minimum: float | None = None              # the contract's min/max: ingest quarantined rows outside
    maximum: float | None = None
    allowed: tuple[float, ...] = ()           # a numeric allowed set
    integer: bool = False                     # contract type int
    clip: tuple[float, float] | None = None   # outliers clipped to these bounds in training: clipped the same here

    @property
    def model_columns(self) -> tuple[str, ...]:
        return self.columns or (self.name,)

    def checked(self, value: float) -> float:
        """A numeric value held to the contract (InputError naming the rule), clipped as in training."""
        if self.integer and not value.is_integer():
            raise InputError(self.name, f"{value!r} is not a whole number (the contract's type is int)", "type")
        if self.allowed and value not in self.allowed:
            raise InputError(self.name, f"{value:g} not in {[_num(v) for v in self.allowed]}", "allowed")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise InputError(self.name, f"{value:g} outside [{_num(self.minimum)}, {_num(self.maximum)}] "
                                        "(the contract's range)", "range")
        if self.clip is not None:
            value = min(max(value, self.clip[0]), self.clip[1])
        if abs(value) > FLOAT32_MAX:
            raise InputError(self.name, f"{value:g} is beyond the model's float32 range (±{FLOAT32_MAX:.3g})", "range")
        return value


@dataclass(frozen=True)
class Preprocessing:
    features: tuple[Feature, ...]
    target: str
    task: Literal["classification", "regression"]
    classes: tuple[str, ...] = ()
    normalization: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    dataset: str | None = None
    dataset_version: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Preprocessing:
        features = tuple(
            Feature(
                name=f["name"],
                kind=f.get("kind", "numeric"),
                encoding=f.get("encoding", "none"),
                vocabulary=tuple(str(v) for v in f.get("vocabulary", ())),
                columns=tuple(f.get("columns", ())),
                minimum=f.get("minimum"),
                maximum=f.get("maximum"),
                allowed=tuple(float(v) for v in f.get("allowed") or ()),
                integer=bool(f.get("integer", False)),
                clip=tuple(f["clip"]) if f.get("clip") else None,
            )
            for f in manifest["features"]
        )
        return cls(
            features=features,
            target=manifest["target"],
            task=manifest.get("task", "classification"),
            classes=tuple(str(c) for c in manifest.get("classes", ())),
            normalization={k: dict(v) for k, v in manifest.get("normalization", {}).items()},
            dataset=manifest.get("dataset"),
            dataset_version=manifest.get("version"),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls.from_manifest(data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = [asdict(f) for f in self.features]
        out["version"] = out.pop("dataset_version")
        return out

    @property
    def input_columns(self) -> list[str]:
        """Model input columns, in order, as stored in the dataset's Parquet."""
        return [c for f in self.features for c in f.model_columns]

    @property
    def num_inputs(self) -> int:
        return len(self.input_columns)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Raw request records → encoded columns (as ingest stores them). Raises InputError."""
        out: dict[str, list[float]] = {c: [] for c in self.input_columns}
        for record in records:
            if not isinstance(record, Mapping):
                raise InputError("instances", f"each instance must be an object, got {type(record).__name__}")
            for feat in self.features:
                if feat.name not in record or record[feat.name] is None:
                    raise InputError(feat.name, "is required", "required")
                value = record[feat.name]
                if feat.kind == "numeric":
                    out[feat.name].append(feat.checked(_number(feat.name, value)))
                    continue
                text = str(value)
                if text not in feat.vocabulary:
                    raise InputError(feat.name, f"unknown category {text!r}; allowed: {list(feat.vocabulary)}",
                                     "allowed")
                index = feat.vocabulary.index(text)
                if feat.encoding == "onehot":
                    for i, col in enumerate(feat.model_columns):
                        out[col].append(1.0 if i == index else 0.0)
                else:
                    out[feat.model_columns[0]].append(float(index))
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def to_matrix(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Encoded columns → normalised float32 matrix [rows, num_inputs] in model order."""
        parts = []
        for col in self.input_columns:
            if col not in columns:
                raise InputError(col, "missing column", "required")
            values = np.asarray(columns[col], dtype=np.float32)
            stats = self.normalization.get(col)
            if stats:
                std = float(stats.get("std") or 1.0)
                with np.errstate(over="ignore"):
                    values = (values - float(stats["mean"])) / (std if std > 0 else 1.0)
            if not np.isfinite(values).all():
                raise InputError(col, "is too large for the model once scaled (not finite in float32)", "range")
            parts.append(values)
        return np.stack(parts, axis=1).astype(np.float32, copy=False)

    def records_to_matrix(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.to_matrix(self.encode_records(records))

    def decode_outputs(self, outputs: np.ndarray) -> list[Any]:
        """Model outputs → predictions: class labels (classification) or floats (regression)."""
        if self.task == "classification":
            return [self.classes[int(i)] for i in outputs.argmax(axis=1)]
        return [float(v) for v in outputs.reshape(-1)]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:   # an int beyond float range
        raise InputError(name, "must be finite", "finite") from None
    if not math.isfinite(number):
        raise InputError(name, "must be finite", "finite")
    return number


def _num(value: float | None) -> str:
    if value is None:
        return "…"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
