"""Persistence of rollouts: state as JSON (compare-and-swap), events and analysis timeline as JSON lines.

Layout under ``<state_dir>/rollouts/<model>/``::

    current            id of the latest rollout of this model
    <id>/state.json    the RolloutState (atomically replaced)
    <id>/events.jsonl  one line per transition / command / failed check (appended, fsynced)
    <id>/timeline.jsonl one line per analysis interval: per-variant requests, error rate, p50/p99, weights

The controller saves state and events *before* it acts on them, so a crash between the two
leaves a state that the restarted controller re-applies (see ``state`` command ``restart``).

One writer: ``state.json`` and ``current`` are written with :func:`cluster.files.write_if`
against the token this store last read or wrote. A second controller of the same model (a
Serve redeploy, a replaced replica) that changed them in between makes the save raise
:class:`~cluster.files.WriteConflict`; the loser's events are not appended and it must
:meth:`load` again before it acts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cluster.files import read_versioned, write_if
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
        self._tokens: dict[Path, str | None] = {}   # path → token as this store last read or wrote it

    def _dir(self, rollout_id: str) -> Path:
        if not _SAFE.match(rollout_id):
            raise RolloutError(f"invalid rollout id {rollout_id!r}", 400)
        return self.root / rollout_id

    def save(self, state: RolloutState, events: list[dict[str, Any]] | None = None) -> None:
        """Compare-and-swap state.json (and ``current`` for a new rollout) against what this store last saw,
        then append the events. Raises WriteConflict, having written nothing, when another writer got there."""
        folder = self._dir(state.rollout_id)
        state_path, current_path = folder / "state.json", self.root / "current"
        if current_path not in self._tokens:
            self._remember(current_path)
        if self.current_id() != state.rollout_id:
            self._cas(current_path, state.rollout_id)   # claims the model for this rollout: one start wins
        elif state_path not in self._tokens:
            self._remember(state_path)
        self._cas(state_path, json.dumps(state.to_dict(), indent=1))
        if events:
            _append_lines(folder / "events.jsonl", events)

    def _remember(self, path: Path) -> None:
        found = read_versioned(path)
        self._tokens[path] = None if found is None else found[1]

    def _cas(self, path: Path, text: str) -> None:
        try:
            self._tokens[path] = write_if(path, text, self._tokens.get(path))
        except BaseException:
            self._tokens.pop(path, None)   # unknown now: the next load reads it again
            raise

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
        """The rollout (default: the current one). Loading the current one also takes its write tokens:
        the next :meth:`save` succeeds only if nobody wrote in between."""
        if rollout_id is None:
            self._remember(self.root / "current")
        rid = rollout_id or self.current_id()
        if rid is None:
            return None
        path = self._dir(rid) / "state.json"
        found = read_versioned(path)
        if found is None:
            if rollout_id is not None:
                raise RolloutError(f"no rollout {rollout_id!r}", 404)
            return None
        if rollout_id is None:
            self._tokens[path] = found[1]
        return RolloutState.from_dict(json.loads(found[0]))

    def changed_since_saved(self) -> bool:
        """True when ``current`` or the current state.json is no longer what this store last read or wrote:
        another controller has written; this one must not act before it loads again."""
        current_path = self.root / "current"
        rid = self.current_id()
        paths = [current_path] + ([self._dir(rid) / "state.json"] if rid else [])
        for path in paths:
            found = read_versioned(path)
            token = None if found is None else found[1]
            if path not in self._tokens or self._tokens[path] != token:
                return True
        return False

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
