"""Test hook: make one worker die at a chosen step, once, to prove automatic resume.

``RAYLINE_TEST_FAIL_AT_STEP=k`` (and optionally ``RAYLINE_TEST_FAIL_RANK``, default 1) is
read by the driver and passed to the workers; the chosen rank hard-exits before step ``k``
the first time it gets there. A marker file in the run's storage directory makes it happen
only once, so the restarted worker group runs through.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAIL_AT_STEP_ENV = "RAYLINE_TEST_FAIL_AT_STEP"
FAIL_RANK_ENV = "RAYLINE_TEST_FAIL_RANK"


@dataclass(frozen=True)
class FaultPlan:
    at_step: int | None = None
    rank: int = 1
    marker: str | None = None

    @classmethod
    def from_env(cls, run_dir: Path) -> FaultPlan:
        step = os.environ.get(FAIL_AT_STEP_ENV)
        if not step:
            return cls()
        return cls(at_step=int(step), rank=int(os.environ.get(FAIL_RANK_ENV, "1")),
                   marker=str(run_dir / f".injected_failure_step{step}"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def maybe_fail(self, step: int, rank: int) -> None:
        if self.at_step is None or step != self.at_step or rank != self.rank or self.marker is None:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {rank} exited at step {step}\n")
        os._exit(17)  # a hard death, like an OOM kill: no cleanup, no exception handling
