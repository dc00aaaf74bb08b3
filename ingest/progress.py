"""Progress of a run: a live line on a TTY, JSON log lines otherwise (Ray job logs, CI)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("ingest.progress")


class Progress:
    """``step(name, **counts)`` marks a step done; ``rows(n)`` adds rows scanned in the current step."""

    def __init__(self, dataset: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.dataset = dataset
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.current = "start"
        self.scanned = 0

    def begin(self, step: str) -> None:
        self.current = step
        self.scanned = 0
        self._emit(f"{step}…", {})

    def rows(self, n: int, total: int | None = None) -> None:
        self.scanned += n
        self._emit(f"{self.current}: {self.scanned:,} rows" + (f" of {total:,}" if total else ""),
                   {"rows_scanned": self.scanned, "rows_total": total})

    def step(self, name: str, **counts: Any) -> None:
        self.current = name
        detail = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in counts.items())
        self._emit(f"{name} done ({detail})", counts, done=True)

    def _emit(self, text: str, fields: dict[str, Any], done: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            end = "\n" if done else ""
            self.stream.write(f"\r\033[K[ingest {self.dataset} {elapsed:6.1f}s] {text}{end}")
            self.stream.flush()
            return
        log.info(text, extra={"dataset": self.dataset, "step": self.current, "elapsed_s": round(elapsed, 3),
                              "done": done, **fields})
