"""Persistence of rollouts on any storage root (local path, ``file://``, ``s3://``): state by compare-and-swap,
events and the analysis timeline as write-once batches.

Layout under ``<rollouts_root>/<model>/`` (``rollouts_root`` defaults to ``<state_dir>/rollouts``)::

    current                    id of the latest rollout of this model
    <id>/state.json            the RolloutState (compare-and-swap)
    <id>/events/<seq>.jsonl    one object per saved batch of transitions / commands / failed checks
    <id>/timeline/<seq>.jsonl  one object per analysis interval: per-variant requests, error rate, p50/p99, weights

Object storage has no append, so events and timeline points are written once, each batch under a
name that sorts by write time (nanoseconds, then a random tag), and read back in name order. The
same layout serves local roots, so there is one code path; ``events.jsonl`` / ``timeline.jsonl``
left by earlier releases are still read first.

The controller saves state and events *before* it acts on them, so a crash between the two
leaves a state that the restarted controller re-applies (see ``state`` command ``restart``).

One writer: ``state.json`` and ``current`` are written with :func:`cluster.files.write_if`
against the token this store last read or wrote. A second controller of the same model (a
Serve redeploy, a replaced replica) that changed them in between makes the save raise
:class:`~cluster.files.WriteConflict`; the loser's events are not written and it must
:meth:`load` again before it acts.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.files import atomic_write, is_local, join, listdir, local_path, read_bytes, read_versioned, write_if
from deployments.rollout.errors import RolloutError
from deployments.rollout.state import RolloutState

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_LEGACY_LINES = {"events": "events.jsonl", "timeline": "timeline.jsonl"}


class RolloutStore:
    def __init__(self, rollouts_root: str | Path, model: str) -> None:
        if not _SAFE.match(model):
            raise RolloutError(f"model name {model!r} is not usable as a directory name", 400)
        self.root = join(rollouts_root, model)   # a URL or a path, as given
        if is_local(rollouts_root):
            _adopt_legacy(local_path(join(rollouts_root, "rollouts", model)), local_path(self.root))
        self._tokens: dict[str, str | None] = {}   # url → token as this store last read or wrote it

    def _dir(self, rollout_id: str) -> str:
        if not _SAFE.match(rollout_id):
            raise RolloutError(f"invalid rollout id {rollout_id!r}", 400)
        return join(self.root, rollout_id)

    def save(self, state: RolloutState, events: list[dict[str, Any]] | None = None) -> None:
        """Compare-and-swap state.json (and ``current`` for a new rollout) against what this store last saw,
        then write the events. Raises WriteConflict, having written nothing, when another writer got there."""
        folder = self._dir(state.rollout_id)
        state_path, current_path = join(folder, "state.json"), join(self.root, "current")
        if current_path not in self._tokens:
            self._remember(current_path)
        if self.current_id() != state.rollout_id:
            self._cas(current_path, state.rollout_id)   # claims the model for this rollout: one start wins
        elif state_path not in self._tokens:
            self._remember(state_path)
        self._cas(state_path, json.dumps(state.to_dict(), indent=1))
        if events:
            write_batch(folder, "events", events)

    def _remember(self, url: str) -> None:
        found = read_versioned(url)
        self._tokens[url] = None if found is None else found[1]

    def _cas(self, url: str, text: str) -> None:
        try:
            self._tokens[url] = write_if(url, text, self._tokens.get(url))
        except BaseException:
            self._tokens.pop(url, None)   # unknown now: the next load reads it again
            raise

    def append_timeline(self, rollout_id: str, point: dict[str, Any]) -> None:
        write_batch(self._dir(rollout_id), "timeline", [point])

    def current_id(self) -> str | None:
        data = read_bytes(join(self.root, "current"))
        return (data.decode().strip() or None) if data is not None else None

    def load(self, rollout_id: str | None = None) -> RolloutState | None:
        """The rollout (default: the current one). Loading the current one also takes its write tokens:
        the next :meth:`save` succeeds only if nobody wrote in between."""
        if rollout_id is None:
            self._remember(join(self.root, "current"))
        rid = rollout_id or self.current_id()
        if rid is None:
            return None
        url = join(self._dir(rid), "state.json")
        found = read_versioned(url)
        if found is None:
            if rollout_id is not None:
                raise RolloutError(f"no rollout {rollout_id!r}", 404)
            return None
        if rollout_id is None:
            self._tokens[url] = found[1]
        return RolloutState.from_dict(json.loads(found[0]))

    def changed_since_saved(self) -> bool:
        """True when ``current`` or the current state.json is no longer what this store last read or wrote:
        another controller has written; this one must not act before it loads again."""
        current_path = join(self.root, "current")
        rid = self.current_id()
        urls = [current_path] + ([join(self._dir(rid), "state.json")] if rid else [])
        for url in urls:
            found = read_versioned(url)
            token = None if found is None else found[1]
            if url not in self._tokens or self._tokens[url] != token:
                return True
        return False

    def events(self, rollout_id: str) -> list[dict[str, Any]]:
        return read_batches(self._dir(rollout_id), "events")

    def timeline(self, rollout_id: str) -> list[dict[str, Any]]:
        return read_batches(self._dir(rollout_id), "timeline")

    def rollout_ids(self) -> list[str]:
        """All rollouts of this model, oldest first (by the state's ``created_at``: no mtimes on object storage)."""
        names = [n for n in listdir(self.root) if _SAFE.match(n) and n != "current" and not n.startswith(".")]
        found = [(state.created_at, rid) for rid in names for state in [self._peek(rid)] if state is not None]
        return [rid for _, rid in sorted(found)]

    def _peek(self, rollout_id: str) -> RolloutState | None:
        data = read_bytes(join(self._dir(rollout_id), "state.json"))
        return None if data is None else RolloutState.from_dict(json.loads(data))

    def bundle(self, rollout_id: str) -> dict[str, Any]:
        """State, events and timeline of one rollout: what reports are made from."""
        state = self.load(rollout_id)
        assert state is not None
        return {"state": state.to_dict(), "events": self.events(rollout_id), "timeline": self.timeline(rollout_id)}


def _adopt_legacy(legacy: Path, root: Path) -> None:
    """Earlier releases passed ``<state_dir>/rollouts`` as the state dir: move their history to the one path."""
    if legacy.is_dir() and not root.exists():
        legacy.rename(root)


def write_batch(folder: str, kind: str, rows: list[dict[str, Any]]) -> None:
    """One write-once object per batch, named so that names sort in write order."""
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
    atomic_write(join(folder, kind, name), "".join(json.dumps(row, default=str) + "\n" for row in rows))


def read_batches(folder: str, kind: str) -> list[dict[str, Any]]:
    """The legacy append file (events, timeline: if any), then every batch in name order."""
    urls = [join(folder, _LEGACY_LINES[kind])] if kind in _LEGACY_LINES else []
    urls += [join(folder, kind, name) for name in listdir(join(folder, kind)) if name.endswith(".jsonl")]
    out = []
    for url in urls:
        data = read_bytes(url)
        for line in (data or b"").decode().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue   # a torn last line of a legacy append file
    return out
