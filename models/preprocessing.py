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
      - {name: age, kind: numeric}
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


class InputError(ValueError):
    """A request field is missing or has the wrong type/value; ``field`` names it."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field '{field_name}': {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Literal["numeric", "categorical"]
    encoding: Literal["none", "label", "onehot"] = "none"
    vocabulary: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    @property
    def model_columns(self) -> tuple[str, ...]:
        return self.columns or (self.name,)


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
                    raise InputError(feat.name, "is required")
                value = record[feat.name]
                if feat.kind == "numeric":
                    out[feat.name].append(_number(feat.name, value))
                    continue
                text = str(value)
                if text not in feat.vocabulary:
                    raise InputError(feat.name, f"unknown category {text!r}; allowed: {list(feat.vocabulary)}")
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
                raise InputError(col, "missing column")
            values = np.asarray(columns[col], dtype=np.float32)
            stats = self.normalization.get(col)
            if stats:
                std = float(stats.get("std") or 1.0)
                values = (values - float(stats["mean"])) / (std if std > 0 else 1.0)
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
    number = float(value)
    if not math.isfinite(number):
        raise InputError(name, "must be finite")
    return number
