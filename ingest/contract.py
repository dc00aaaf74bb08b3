"""The data contract: a YAML file per dataset saying what a valid row is and how to clean it.

Columns carry type, nullability, range, allowed set, regex, role (feature/key/target/ignore),
and their cleaning (fill, outliers, encoding). ``null_values`` names the texts that mean
"missing" (R's ``NA``, ``N/A``, ``null``): for the whole file, or per column. Loading validates
the contract itself, so a contract mistake fails before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.yamlfile import read_yaml_mapping
from ingest.errors import ContractError

ColumnType = Literal["int", "float", "str", "bool", "date"]
NUMERIC_TYPES = ("int", "float")
M = TypeVar("M", bound=BaseModel)
DEFAULT_NULL_VALUES: tuple[str, ...] = ("",)  # empty (or blank) text, as the CSV reader already reads it


def _as_texts(value: Any) -> Any:
    """A YAML list of markers as text (``null`` in YAML is None: the marker is then the word 'null')."""
    if value is None or isinstance(value, str):
        return value if value is None else (value.strip(),)
    return tuple("null" if v is None else str(v).strip() for v in value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FillSpec(_Strict):
    """How nulls are filled: statistics come from the deduplicated valid rows."""

    method: Literal["mean", "median", "mode", "constant", "forward"]
    value: Any = None


class OutlierSpec(_Strict):
    """IQR (threshold = k, bounds q1 - k·IQR, q3 + k·IQR) or z-score (threshold = |z|)."""

    method: Literal["iqr", "zscore"] = "iqr"
    threshold: float = Field(1.5, gt=0)
    action: Literal["clip", "quarantine"] = "clip"


class ColumnSpec(_Strict):
    name: str
    type: ColumnType
    required: bool = True
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    regex: str | None = None
    role: Literal["feature", "key", "target", "ignore"] = "feature"
    fill: FillSpec | None = None
    outliers: OutlierSpec | None = None
    encoding: Literal["label", "onehot"] | None = None
    null_values: tuple[str, ...] | None = None  # replaces the contract's null_values for this column

    @field_validator("null_values", mode="before")
    @classmethod
    def _null_values_as_text(cls, value: Any) -> Any:
        return _as_texts(value)

    @field_validator("fill", mode="before")
    @classmethod
    def _fill_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"method": value}
        if isinstance(value, dict) and "constant" in value:
            return {"method": "constant", "value": value["constant"]}
        return value

    @field_validator("allowed", mode="before")
    @classmethod
    def _allowed_as_text(cls, value: Any) -> Any:
        return None if value is None else tuple(str(v) for v in value)

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} does not compile: {exc}") from None
        if (self.min is not None or self.max is not None or self.outliers) and self.type not in NUMERIC_TYPES:
            raise ValueError(f"min/max/outliers need a numeric type, not {self.type}")
        if self.fill and self.fill.method in ("mean", "median") and self.type not in NUMERIC_TYPES:
            raise ValueError(f"fill {self.fill.method} needs a numeric type, not {self.type}")
        if self.fill and self.fill.method == "constant" and self.fill.value is None:
            raise ValueError("fill constant needs a value")
        if self.role == "feature" and self.type not in NUMERIC_TYPES and self.encoding is None:
            raise ValueError(f"a {self.type} feature needs an encoding (label or onehot)")
        if self.role in ("feature", "target", "key") and self.nullable and self.fill is None:
            raise ValueError(f"a {self.role} column must be nullable: false or have a fill")
        if self.encoding is not None and self.type in NUMERIC_TYPES:
            raise ValueError("encoding applies to categorical (str/bool) columns only")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


class DedupeSpec(_Strict):
    exact: bool = True
    key: Literal["first", "last", "quarantine"] = "first"


class SplitSpec(_Strict):
    validation_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0


class DriftSpec(_Strict):
    psi_threshold: float = Field(0.2, gt=0)
    null_rate_threshold: float = Field(0.1, gt=0)
    action: Literal["warn", "fail"] = "warn"
    bins: int = Field(10, ge=2, le=100)


class Contract(_Strict):
    dataset: str | None = None
    description: str = ""
    key: str | None = None
    target: str
    task: Literal["classification", "regression"] = "classification"
    cast_error_tolerance: float = Field(0.05, ge=0, le=1)
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES  # texts read as null in every column
    columns: tuple[ColumnSpec, ...]
    deduplicate: DedupeSpec = DedupeSpec()
    split: SplitSpec = SplitSpec()
    drift: DriftSpec = DriftSpec()

    @field_validator("null_values", mode="before")
    @classmethod
    def _null_values_as_text(cls, value: Any) -> Any:
        return DEFAULT_NULL_VALUES if value is None else _as_texts(value)

    @model_validator(mode="after")
    def _roles(self) -> Contract:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"columns listed twice: {dupes}")
        if self.target not in names:
            raise ValueError(f"target {self.target!r} is not a listed column")
        if self.key is not None and self.key not in names:
            raise ValueError(f"key {self.key!r} is not a listed column")
        for col in self.columns:
            if col.name == self.target and col.role != "target":
                raise ValueError(f"column {col.name!r} is the target; give it role: target")
            if col.role == "target" and col.name != self.target:
                raise ValueError(f"column {col.name!r} has role target but the target is {self.target!r}")
            if col.role == "key" and col.name != self.key:
                raise ValueError(f"column {col.name!r} has role key but the key is {self.key!r}")
        target = self.column(self.target)
        if self.task == "regression" and not target.is_numeric:
            raise ValueError("a regression target must be numeric")
        if self.task == "classification" and target.is_numeric and target.allowed is None:
            raise ValueError("a numeric classification target needs its classes under 'allowed'")
        if not self.features:
            raise ValueError("no feature columns")
        return self

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def null_values_of(self, col: ColumnSpec) -> tuple[str, ...]:
        """The texts that mean "missing" in ``col`` (its own list, else the contract's)."""
        return self.null_values if col.null_values is None else col.null_values

    @property
    def features(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role == "feature"]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def digest(self) -> str:
        """Content hash of the contract's meaning (not its formatting).

        Null markers left at their default are not part of the text, so contracts written before
        markers existed keep their digest (and their datasets their version ids).
        """
        body = self.model_dump(mode="json")
        if tuple(body["null_values"]) == DEFAULT_NULL_VALUES:
            del body["null_values"]
        for column in body["columns"]:
            if column["null_values"] is None:
                del column["null_values"]
        text = json.dumps(body, sort_keys=True)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def load_contract(source: str | Path | Contract | dict[str, Any]) -> Contract:
    """A Contract from a YAML path, a dict or an existing Contract; ContractError names the field."""
    return load_model(source, Contract)


def load_model(source: str | Path | BaseModel | dict[str, Any], model: type[M]) -> M:
    """A contract of type ``model`` (table or text) from a YAML path, a dict or an instance."""
    if isinstance(source, model):
        return source
    if isinstance(source, BaseModel):
        raise ContractError(f"expected a {model.__name__}, got a {type(source).__name__}")
    if isinstance(source, dict):
        data, where = source, "contract"
    else:
        data, where = read_yaml_mapping(source, ContractError, "contract file"), str(source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(_loc_name(data, first["loc"]))
        raise ContractError(f"{where}: invalid '{loc or 'contract'}': {first['msg']}") from None


def _loc_name(data: dict[str, Any], loc: tuple[Any, ...]) -> list[str]:
    """Error location with column indexes replaced by column names (columns.3 → columns[tenure])."""
    out: list[str] = []
    node: Any = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, dict) else None
            out[-1] = f"{out[-1]}[{name or part}]"
            continue
        out.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return out
