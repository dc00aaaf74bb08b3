"""Feedback with delayed labels: ``POST /v1/models/{name}:feedback`` joined, stored and counted.

A client posts the request id of a response it got (seconds to days ago) and what it then observed:
the true ``label`` (classification), the true ``value`` (regression) or a ``reward``. The id is
self-describing and signed (:mod:`deployments.request_ids`), so the join needs no lookup: the
variant, the version and the prediction come out of the id itself, on any router replica.

Joined outcomes (see :data:`~deployments.contracts.OUTCOMES`): ``reward`` as posted, ``correct`` 1.0/0.0
(label equals the prediction), ``abs_error`` \\|value − prediction\\|. They go three ways:

* durably into the feedback store (``<feedback_root>/<model>/feedback/<seq>.jsonl``, write-once
  batches as the rollout events): the client's 200 comes *after* the batch holding its feedback is
  written. Posts that arrive while a batch is being written wait for the next one (group commit),
  so a busy router writes one object per batch, not one per label, and nothing acknowledged is lost;
* into Prometheus per variant and version: the ``serve_outcome`` histogram (``_count``: labelled
  requests; ``_sum / _count``: online accuracy, mean absolute error, mean reward) and ``serve_feedback_total``;
* into the router's next :class:`~deployments.contracts.VariantWindow` ``outcomes`` (only when the id's
  version is the one the variant serves now), which the rollout controller's outcome gates and A/B
  tests read.

Duplicates: the same (request id, index) posted twice to one router replica is a 409. A duplicate
sent to another replica is stored again; :meth:`FeedbackStore.read` keeps the first of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from cluster import metrics
from cluster.files import WriteConflict, join, read_bytes, write_if
from deployments.contracts import OUTCOME_ABS_ERROR, OUTCOME_CORRECT, OUTCOME_REWARD
from deployments.payload import PayloadError
from deployments.request_ids import Served
from deployments.rollout.store import read_batches, write_batch

FEEDBACK = metrics.counter("serve_feedback_total", "Feedback posts joined to the version that served them",
                           ("variant", "version", "kind"))
# _count is the labelled count; _sum / _count the online accuracy ("correct"), mean abs error, mean reward
OUTCOME = metrics.histogram("serve_outcome", "Outcome samples joined from feedback, per variant and version",
                            ("variant", "version", "outcome"),
                            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.95, 1.0, 2.5, 10.0))   # Ray: positive bounds

SEEN_KEYS = 200_000   # (request id, index) pairs a replica remembers to refuse a duplicate with 409


class FeedbackBody(BaseModel):
    """What a client posts: the id of the response and exactly one observed outcome."""

    model_config = ConfigDict(extra="forbid")

    request_id: StrictStr = Field(min_length=1, max_length=8192)
    index: StrictInt = Field(0, ge=0, description="which instance of a batched request")
    label: StrictStr | StrictInt | StrictBool | None = Field(None, description="the true class")
    value: float | None = Field(None, strict=True, description="the true value (regression)")
    reward: float | None = Field(None, strict=True, description="a reward for the response")

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackBody:
        given = [k for k in ("label", "value", "reward") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of label, value, reward is required, got {given or 'none'}")
        for name in ("value", "reward"):
            number = getattr(self, name)
            if number is not None and not math.isfinite(number):
                raise ValueError(f"{name} must be finite")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("label", "value", "reward") if getattr(self, k) is not None)


def parse_body(data: Any) -> FeedbackBody:
    """A JSON body → FeedbackBody, or a 422 PayloadError naming the first bad field."""
    try:
        return FeedbackBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = str(err["loc"][0]) if err["loc"] else "body"   # the field, not the union branch tried
        raise PayloadError(422, where, err["msg"].removeprefix("Value error, ")) from None


def outcomes(served: Served, body: FeedbackBody) -> dict[str, float]:
    """The outcome samples one feedback adds, or a 422 PayloadError when it cannot be joined."""
    if body.index >= served.count:
        raise PayloadError(422, "index", f"is {body.index}; the request had {served.count} instance(s)")
    if body.reward is not None:
        return {OUTCOME_REWARD: float(body.reward)}
    if served.predictions is None:
        raise PayloadError(422, body.kind, "this response's predictions were too large to record in its id; "
                                           "only a reward can be posted for it")
    predicted = served.predictions[body.index]
    if body.label is not None:
        return {OUTCOME_CORRECT: 1.0 if same_label(body.label, predicted) else 0.0}
    if isinstance(predicted, bool) or not isinstance(predicted, (int, float)):
        raise PayloadError(422, "value", f"the prediction was {type(predicted).__name__}, not a number; "
                                         "post a label or a reward")
    return {OUTCOME_ABS_ERROR: abs(float(body.value) - float(predicted))}  # type: ignore[arg-type]


def same_label(label: Any, predicted: Any) -> bool:
    """Labels compare as numbers when both are numbers (1 == 1.0), else as text ("yes" == "yes", 1 == "1")."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (label, predicted))
    return float(label) == float(predicted) if numbers else str(label) == str(predicted)


class FeedbackStore:
    """Feedback records of one model under any storage root, as write-once batches; and the id signing key."""

    def __init__(self, root: str, model: str) -> None:
        self.root = join(root, model)

    def append(self, records: list[dict[str, Any]]) -> None:
        write_batch(self.root, "feedback", records)

    def read(self) -> list[dict[str, Any]]:
        """Every record in write order; of duplicates of one (request id, index) the first."""
        seen: set[tuple[str, int]] = set()
        out = []
        for record in read_batches(self.root, "feedback"):
            key = (record["request_id"], record["index"])
            if key not in seen:
                seen.add(key)
                out.append(record)
        return out

    def signing_key(self) -> bytes:
        """The random key this model's request ids are signed with when no admin token is set: created by the
        first replica that needs it (compare-and-swap: one wins), read by every other and every restart."""
        url = join(self.root, "request-id.key")
        for _ in range(3):
            data = read_bytes(url)
            if data:
                return bytes.fromhex(data.decode().strip())
            with contextlib.suppress(WriteConflict):
                write_if(url, secrets.token_hex(32), None)
        raise RuntimeError(f"cannot read or create the request-id key at {url}")


class GroupCommit:
    """Writes queued records in batches; each caller returns once the batch holding its record is durable.

    While one batch is being written the next accumulates, so the write rate adapts to the load with no
    timer and no added latency when idle. A failed write fails every caller of that batch (they get a
    503 and may retry): nothing is acknowledged that is not stored.
    """

    def __init__(self, store: FeedbackStore, max_batch: int = 1000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def write(self, record: dict[str, Any]) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                try:
                    await asyncio.to_thread(self.store.append, [record for record, _ in batch])
                except Exception as exc:  # the store is away: these callers are told, nothing is acknowledged
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


class SeenKeys:
    """The (request id, index) pairs one replica has stored, newest last, at most ``limit``."""

    def __init__(self, limit: int = SEEN_KEYS) -> None:
        self.limit = limit
        self._keys: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, int]) -> None:
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


def record(served: Served, body: FeedbackBody, joined: dict[str, float], router_id: str) -> dict[str, Any]:
    """The stored form of one feedback: what was posted, what it joined to, and when it arrived."""
    return {"request_id": body.request_id, "index": body.index, "kind": body.kind,
            body.kind: getattr(body, body.kind), "variant": served.variant, "version": served.version,
            "served_at": served.served_at, "received_at": time.time(), "outcomes": joined, "router": router_id}


def count(served: Served, kind: str, joined: dict[str, float]) -> None:
    """Prometheus: the feedback and its outcome samples, per variant and version."""
    labels = {"variant": served.variant, "version": served.version}
    FEEDBACK.labels(**labels, kind=kind).inc()
    for name, value in joined.items():
        OUTCOME.labels(**labels, outcome=name).observe(value)
