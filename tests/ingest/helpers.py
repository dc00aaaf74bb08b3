"""Ingest test data: generated tables written to real files and contracts built as dicts; shared by the
ingest and storage-fault tests (a plain module, so nobody imports a conftest)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS_CSV = ROOT / "examples" / "data" / "customers.csv"
CUSTOMERS_CONTRACT = ROOT / "examples" / "contracts" / "customers.yaml"

BASE_CONTRACT: dict[str, Any] = {
    "key": "id",
    "target": "y",
    "task": "classification",
    "columns": [
        {"name": "id", "type": "str", "nullable": False, "regex": r"^K\d+$", "role": "key"},
        {"name": "x", "type": "float", "nullable": False, "min": -100, "max": 100},
        {"name": "n", "type": "int", "nullable": False, "min": 0, "max": 1000},
        {"name": "cat", "type": "str", "nullable": False, "allowed": ["a", "b", "c"], "encoding": "onehot"},
        {"name": "y", "type": "str", "nullable": False, "allowed": ["no", "yes"], "role": "target"},
    ],
    "split": {"validation_fraction": 0.2, "seed": 3},
}


def contract(**changes: Any) -> dict[str, Any]:
    """The base contract with top-level keys replaced and ``columns`` entries patched by name."""
    out = copy.deepcopy(BASE_CONTRACT)
    patches = changes.pop("column_patches", {})
    out.update(changes)
    for col in out["columns"]:
        col.update(patches.get(col["name"], {}))
    return out


def table(rows: int = 2000, seed: int = 0, shift: float = 0.0) -> pl.DataFrame:
    """A clean table matching BASE_CONTRACT; ``shift`` moves x by that many standard deviations."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, rows)
    return pl.DataFrame({
        "id": [f"K{i}" for i in range(rows)],
        "x": np.round(x, 4),
        "n": rng.integers(0, 500, rows),
        "cat": rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2]),
        "y": np.where(x + rng.normal(0, 0.5, rows) > shift, "yes", "no"),
    })


def write_csv(df: pl.DataFrame, path: Path) -> str:
    df.write_csv(path)
    return str(path)
