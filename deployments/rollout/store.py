"""Persistence of rollouts: state as JSON (write-then-rename), events and analysis timeline as JSON lines.

Layout under ``<state_dir>/rollouts/<model>/``::

    current            id of the latest rollout of this model
    <id>/state.json    the RolloutState (atomically replaced)
    <id>/events.jsonl  one line per transition / command / failed check (appended, fsynced)
    <id>/timeline.jsonl one line per analysis interval: per-variant requests, error rate, p50/p99, weights

The controller saves state and events *before* it acts on them, so a crash between the two
leaves a state that the restarted controller re-applies (see ``state`` command ``restart``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from deployments.rollout.errors import RolloutError
from deployments.rollout.state import RolloutState

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class RolloutStore:
    def __init__(self, state_dir: str | Path, model: str) -> None:
        if not _SAFE.match(model):
            raise RolloutError(f"model name {model!r} is not usable as a directory name", 400)
        self.root = Path(state_dir) / "rollouts" / model
        _adopt_legacy(Path(state_dir) / "rollouts" / "rollouts" / model, self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, rollout_id: str) -> Path:
        if not _SAFE.match(rollout_id):
            raise RolloutError(f"invalid rollout id {rollout_id!r}", 400)
        return self.root / rollout_id

    def save(self, state: RolloutState, events: list[dict[str, Any]] | None = None) -> None:
        """Append events, then atomically replace state.json, then point ``current`` at it."""
        folder = self._dir(state.rollout_id)
        folder.mkdir(parents=True, exist_ok=True)
        if events:
            _append_lines(folder / "events.jsonl", events)
        _atomic_write(folder / "state.json", json.dumps(state.to_dict(), indent=1))
        if self.current_id() != state.rollout_id:
            _atomic_write(self.root / "current", state.rollout_id)

    def append_timeline(self, rollout_id: str, point: dict[str, Any]) -> None:
        folder = self._dir(rollout_id)
        folder.mkdir(parents=True, exist_ok=True)
        _append_lines(folder / "timeline.jsonl", [point], sync=False)

    def current_id(self) -> str | None:
        try:
            return (self.root / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def load(self, rollout_id: str | None = None) -> RolloutState | None:
        rid = rollout_id or self.current_id()
        if rid is None:
            return None
        path = self._dir(rid) / "state.json"
        if not path.exists():
            if rollout_id is not None:
                raise RolloutError(f"no rollout {rollout_id!r}", 404)
            return None
        return RolloutState.from_dict(json.loads(path.read_text()))

    def events(self, rollout_id: str) -> list[dict[str, Any]]:
        return _read_lines(self._dir(rollout_id) / "events.jsonl")

    def timeline(self, rollout_id: str) -> list[dict[str, Any]]:
        return _read_lines(self._dir(rollout_id) / "timeline.jsonl")

    def rollout_ids(self) -> list[str]:
        """All rollouts of this model, oldest first."""
        found = [p.parent for p in self.root.glob("*/state.json")]
        return [p.name for p in sorted(found, key=lambda p: (p / "state.json").stat().st_mtime)]

    def bundle(self, rollout_id: str) -> dict[str, Any]:
        """State, events and timeline of one rollout: what reports are made from."""
        state = self.load(rollout_id)
        assert state is not None
        return {"state": state.to_dict(), "events": self.events(rollout_id), "timeline": self.timeline(rollout_id)}


def _adopt_legacy(legacy: Path, root: Path) -> None:
    """Earlier releases passed ``<state_dir>/rollouts`` as the state dir: move their history to the one path."""
    if legacy.is_dir() and not root.exists():
        legacy.rename(root)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_lines(path: Path, rows: list[dict[str, Any]], sync: bool = True) -> None:
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue   # a torn last line after a crash
    return out
