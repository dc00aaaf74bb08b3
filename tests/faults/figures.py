"""Measured outcomes of the fault tests, kept for the closing notes and the README.

Each fault test records what it measured (steps lost, failed-request rate, seconds to
recover, ...) under its own name; the figures land in ``reports/faults/figures.json``
(git-ignored, one entry per test, newest wins) and are printed so CI's log shows them.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parents[2] / "reports" / "faults" / "figures.json"


def record(test: str, **figures: Any) -> None:
    """Store ``figures`` for ``test`` (merged into the shared file under a lock) and print them."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        data[test] = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **figures}
        FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"[fault figures] {test}: {json.dumps(figures, sort_keys=True)}")
