"""Test hooks: make a worker fail at a step, or hold training at a step, to prove automatic resume.

``RAYLINE_TEST_FAIL_AT_STEP=k`` (and optionally ``RAYLINE_TEST_FAIL_RANK``, default 1) is
read by the driver and passed to the workers; the chosen rank hard-exits before step ``k``
the first time it gets there. A marker file in the run's storage directory makes it happen
only once, so the restarted worker group runs through.

``RAYLINE_TEST_HOLD_AT_STEP=k`` is passed the same way, for faults that come from outside:
every rank appends ``rank pid step time`` to ``.test_progress`` in the run's storage
directory after each step and, the first time it completes step ``k``, waits there up to
``HOLD_S``. Steps of a tiny model take milliseconds; the hold lets a test kill a process
mid-epoch at a known step, after Ray has registered the checkpoint before it, and the
progress lines name the worker processes and show where the next attempt started.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FAIL_AT_STEP_ENV = "RAYLINE_TEST_FAIL_AT_STEP"
FAIL_RANK_ENV = "RAYLINE_TEST_FAIL_RANK"
HOLD_AT_STEP_ENV = "RAYLINE_TEST_HOLD_AT_STEP"
HOLD_S = 120.0  # long enough for a loaded machine; a test that never kills only waits this long
PROGRESS_FILE = ".test_progress"


@dataclass(frozen=True)
class Progress:
    """One completed step as a worker noted it."""

    rank: int
    pid: int
    step: int
    time: float


@dataclass(frozen=True)
class FaultPlan:
    at_step: int | None = None
    rank: int = 1
    marker: str | None = None
    hold_at: int | None = None
    run_dir: str | None = None

    @classmethod
    def from_env(cls, run_dir: Path) -> FaultPlan:
        plan: dict[str, Any] = {}
        step = os.environ.get(FAIL_AT_STEP_ENV)
        if step:
            plan.update(at_step=int(step), rank=int(os.environ.get(FAIL_RANK_ENV, "1")),
                        marker=str(run_dir / f".injected_failure_step{step}"))
        hold = os.environ.get(HOLD_AT_STEP_ENV)
        if hold:
            plan.update(hold_at=int(hold), run_dir=str(run_dir))
        return cls(**plan)

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

    def after_step(self, step: int, rank: int) -> None:
        """Note the completed step; hold the first time this rank completes ``hold_at``."""
        if self.hold_at is None or self.run_dir is None:
            return
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / PROGRESS_FILE).open("a") as out:  # one short append per line: lines never interleave
            out.write(f"{rank} {os.getpid()} {step} {time.time():.3f}\n")
        marker = run_dir / f".test_held_step{step}_rank{rank}"
        if step == self.hold_at and not marker.exists():
            marker.write_text(f"rank {rank} held after step {step}\n")
            time.sleep(HOLD_S)


def read_progress(run_dir: Path) -> list[Progress]:
    """Every step the workers noted so far in ``run_dir``, in order (empty before the first)."""
    path = run_dir / PROGRESS_FILE
    if not path.is_file():
        return []
    fields = [line.split() for line in path.read_text().splitlines()]
    return [Progress(int(r), int(p), int(s), float(t)) for r, p, s, t in (f for f in fields if len(f) == 4)]
