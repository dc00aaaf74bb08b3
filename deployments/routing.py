"""Which variant serves a request: forced, sticky by key, or weighted at random.

Pure functions, so assignment is unit-testable and identical in every router replica.
A sticky key hashes (BLAKE2b, stable across processes and Python versions, unlike
``hash()``) to a bucket in [0, 1); buckets are laid out with the candidate first, so when
its weight grows from 5 % to 25 % the users already on it stay on it.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from deployments.contracts import BASELINE, CANDIDATE, Traffic

_SCALE = float(2**64)


def bucket_of(key: str, salt: str = "") -> float:
    """A stable position in [0, 1) for ``key``."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def layout(weights: dict[str, float]) -> list[tuple[str, float]]:
    """Variants in bucket order (candidate first, then baseline, then any others by name) with their weights."""
    rank = {CANDIDATE: 0, BASELINE: 1}
    return sorted(((v, w) for v, w in weights.items() if w > 0), key=lambda vw: (rank.get(vw[0], 2), vw[0]))


def pick(weights: dict[str, float], bucket: float) -> str:
    """The variant whose share of [0, 1) contains ``bucket``."""
    ordered = layout(weights)
    total = sum(w for _, w in ordered)
    edge = 0.0
    for variant, weight in ordered:
        edge += weight / total
        if bucket < edge:
            return variant
    return ordered[-1][0]


def sticky_key(header: str | None, instances: list[dict[str, Any]], field: str | None) -> str | None:
    """The request's sticky key: the header, else the first instance's ``field`` when it is a str/int."""
    if header:
        return header
    if field and instances:
        value = instances[0].get(field)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def choose(weights: dict[str, float], key: str | None, salt: str = "", rng: random.Random | None = None) -> str:
    """Sticky when there is a key, else weighted at random."""
    bucket = bucket_of(key, salt) if key is not None else (rng or random).random()
    return pick(weights, bucket)


# ---- traffic a router applies (fenced by epoch, bounded by the controller's lease) -----------------------------

def newer_or_same(current: Traffic, offered: Traffic) -> bool:
    """Routers apply traffic only from an epoch at least as new as the one they serve: a stale controller
    (a replaced replica still answering, a loser of the state write) cannot turn a router back."""
    return offered.epoch >= current.epoch


def effective_traffic(traffic: Traffic, silent_s: float) -> tuple[dict[str, float], str | None, bool]:
    """(weights, shadow, failed_closed) to route by after ``silent_s`` without hearing from the controller.

    Past the lease the router fails closed: everything to ``traffic.fallback`` (the baseline while a
    rollout can still fail), no shadow copies. Without a lease (static traffic) the split stands.
    """
    if traffic.lease_s is not None and silent_s > traffic.lease_s:
        return {traffic.fallback: 1.0}, None, True
    return traffic.weights, traffic.shadow, False
