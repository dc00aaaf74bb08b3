"""The decode loop in a child process of the replica, so that Serve's threads and the engine stop sharing one GIL.

Why: at concurrency 16 on 2 cores (2026-12-01) the replica process sat at one core (0.99): its engine thread ran
0.72 of a core and waited for the GIL the rest of the time, while Serve's threads (request handling, the body
fetch, one item per streamed piece) held it, and the second core was half idle. A process of its own is what vLLM
does for the same reason (its "engine core"). The replica keeps the tokenizer, the validation and the streams.

:class:`EngineProcess` has the in-process :class:`~deployments.llm.engine.Engine`'s caller side (``submit``,
``cancel``, ``stats``, ``alive``, ``failure``, ``stop``, ``context``); the child runs a real ``Engine`` and
:func:`main`. One duplex socket carries pickled tuples:

- replica → child: the engine's settings first, then ``("submit", id, prompt_ids, params)``, ``("cancel", id)``;
- child → replica: ``("ready", context, dtype)`` once the model is loaded; after every step that emitted or changed the
  counts, ``("events", [(id, Event), ...], stats)`` (one message per step, not per token);
  ``("failed", reason)`` when a forward pass raised.

The child ends when its socket closes (the replica stopped, or died: the kernel closes it), so no engine outlives
its replica. Admission limits (``EngineFull``) are counted on the replica's side, synchronously.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from deployments.llm.engine import EngineFailed, EngineFull, EngineStats, Event, SamplingParams

START_TIMEOUT_S = 300


@dataclass(eq=False)
class RemoteSeq:
    """The replica's view of one sequence in the child: what the events said so far."""

    rid: int
    emit: Callable[[Event], None]
    tokens: int = 0
    logprob_sum: float = 0.0
    finish_reason: str | None = None
    cancelled: bool = False


class EngineProcess:
    """An :class:`~deployments.llm.engine.Engine` in a child process, driven from the replica (any thread)."""

    def __init__(self, folder: Path, device: str, torch_threads: int | None, max_active: int, max_waiting: int,
                 retry_after_s: int, stream_interval: int | None, dtype: str = "auto") -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                      pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self._socket = ours                  # shut down on stop: that wakes the reader and ends the child
        self._conn = Connection(os.dup(ours.fileno()))
        self.max_active, self.max_waiting, self.retry_after_s = max_active, max_waiting, retry_after_s
        self._conn.send({"folder": str(folder), "device": device, "torch_threads": torch_threads,
                         "max_active": max_active, "stream_interval": stream_interval,
                         "dtype": dtype})
        if not self._conn.poll(START_TIMEOUT_S):
            self._proc.kill()
            raise EngineFailed(f"the engine process did not load the model within {START_TIMEOUT_S} s")
        ready = self._conn.recv()
        if ready[0] != "ready":
            raise EngineFailed(f"the engine process failed to start: {ready[1]}")
        self.context: int = ready[1]
        self.dtype: str = ready[2]   # the child's weights as loaded
        self.stats = EngineStats()
        self.failure: str | None = None
        self._seqs: dict[int, RemoteSeq] = {}
        self._next = 0
        self._lock = threading.Lock()      # _seqs, _next and the socket's sending side
        self._reader = threading.Thread(target=self._read, name="llm-engine-reader", daemon=True)
        self._reader.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Callable[[Event], None]) -> RemoteSeq:
        """Queue a sequence in the child. EngineFull past the limits, EngineFailed once the child is gone."""
        with self._lock:
            if self.failure is not None:
                raise EngineFailed(f"the decode loop of this replica stopped: {self.failure}")
            if len(self._seqs) >= self.max_active + self.max_waiting:
                raise EngineFull(len(self._seqs), self.max_active, self.max_waiting, self.retry_after_s)
            self._next += 1
            seq = self._seqs[self._next] = RemoteSeq(self._next, emit)
            self._conn.send(("submit", seq.rid, list(prompt_ids), params))
        return seq

    def cancel(self, seq: RemoteSeq) -> None:
        """Stop ``seq``: the child drops it before its next decode step and answers with its "cancelled" event."""
        with self._lock:
            if seq.rid in self._seqs and self.failure is None:
                seq.cancelled = True
                self._conn.send(("cancel", seq.rid))

    @property
    def alive(self) -> bool:
        return self.failure is None and self._proc.poll() is None

    def stop(self) -> None:
        if self._socket.fileno() == -1:   # stopped already
            return
        with self._lock:
            self.failure = self.failure or "stopped"
            self._socket.shutdown(socket.SHUT_RDWR)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(timeout=10)
        self._conn.close()
        self._socket.close()

    def _read(self) -> None:
        """The child's messages: events to their sequences' callbacks (this thread), the stats, a failure."""
        reason = "the engine process exited"
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "failed":   # its error events came just before
                    reason = self.failure = message[1]
                    continue
                _, events, stats = message
                self.stats = EngineStats(**stats)
                for rid, event in events:
                    self._deliver(rid, event)
        except (EOFError, OSError):
            pass
        with self._lock:
            self.failure = self.failure or reason
            left, self._seqs = list(self._seqs.values()), {}
        for seq in left:   # a stream ends at once instead of waiting for tokens that will never come
            seq.finish_reason = "error"
            seq.emit(Event("", seq.tokens, "error", seq.logprob_sum))

    def _deliver(self, rid: int, event: Event) -> None:
        with self._lock:
            seq = self._seqs.get(rid)
            if seq is None:
                return
            if event.finish_reason is not None:
                del self._seqs[rid]
        seq.tokens, seq.logprob_sum, seq.finish_reason = event.tokens, event.logprob_sum, event.finish_reason
        seq.emit(event)


def main(fd: int) -> None:
    """The child: load the model, run the engine, relay submissions in and events out until the socket closes."""
    import torch

    from deployments.llm.engine import Engine
    from deployments.llm.loader import from_folder

    conn = Connection(fd)
    spec = conn.recv()
    try:
        if spec["torch_threads"]:
            torch.set_num_threads(spec["torch_threads"])
        model, tokenizer = from_folder(spec["folder"], spec["device"], spec["dtype"])
        # the replica counts the limits; the child admits whatever it is sent
        engine = Engine(model, tokenizer, spec["max_active"], max_waiting=1 << 30,
                        stream_interval=spec["stream_interval"])
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    child = _Child(engine, conn)
    engine.start(after_step=child.flush)
    conn.send(("ready", engine.context, engine.dtype))
    try:
        while True:
            message = conn.recv()
            if message[0] == "submit":
                child.submit(*message[1:])
            elif message[0] == "cancel":
                child.cancel(message[1])
    except (EOFError, OSError):
        pass
    finally:
        engine.stop()


class _Child:
    """The child's side: sequences by id; events gathered during a step and sent after it in one message."""

    def __init__(self, engine: Any, conn: Connection) -> None:
        self.engine, self.conn = engine, conn
        self.seqs: dict[int, Any] = {}
        self.outbox: list[tuple[int, Event]] = []
        self.sent: dict[str, int] = {}

    def submit(self, rid: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.seqs[rid] = self.engine.submit(prompt_ids, params, lambda event: self._emit(rid, event))

    def cancel(self, rid: int) -> None:
        if (seq := self.seqs.get(rid)) is not None:
            self.engine.cancel(seq)

    def _emit(self, rid: int, event: Event) -> None:   # the engine's thread
        self.outbox.append((rid, event))
        if event.finish_reason is not None:
            self.seqs.pop(rid, None)

    def flush(self) -> None:
        """After each step (the engine's thread): this step's events and the counts, if anything changed."""
        stats = self.engine.stats.as_dict()
        if self.outbox or stats != self.sent:
            batch, self.outbox, self.sent = self.outbox, [], stats
            self.conn.send(("events", batch, stats))
        if self.engine.failure is not None:
            self.conn.send(("failed", self.engine.failure))


if __name__ == "__main__":
    main(int(sys.argv[1]))
