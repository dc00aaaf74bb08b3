"""Variant assignment: stable sticky buckets, weights honoured, growth keeps early candidate users."""

from __future__ import annotations

import random
import subprocess
import sys

from deployments.contracts import BASELINE, CANDIDATE
from deployments.routing import bucket_of, choose, pick, sticky_key


def test_sticky_bucket_is_the_same_in_another_process():
    """BLAKE2b, not hash(): a user maps to the same bucket in every router replica."""
    code = "from deployments.routing import bucket_of; print(repr(bucket_of('user-42', 'm')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."})
    assert float(other.stdout) == bucket_of("user-42", "m")


def test_the_same_key_always_gets_the_same_variant_for_fixed_weights():
    weights = {BASELINE: 0.7, CANDIDATE: 0.3}
    for user in (f"user-{i}" for i in range(200)):
        assert len({choose(weights, user, "m") for _ in range(5)}) == 1


def test_users_on_the_candidate_at_5_percent_stay_on_it_at_25_percent():
    users = [f"user-{i}" for i in range(5000)]
    at5 = {u for u in users if choose({BASELINE: 0.95, CANDIDATE: 0.05}, u, "m") == CANDIDATE}
    at25 = {u for u in users if choose({BASELINE: 0.75, CANDIDATE: 0.25}, u, "m") == CANDIDATE}
    assert at5 and at5 <= at25
    assert 0.2 < len(at25) / len(users) < 0.3


def test_random_assignment_honours_the_weights():
    rng = random.Random(7)
    picks = [choose({BASELINE: 0.8, CANDIDATE: 0.2}, None, rng=rng) for _ in range(20_000)]
    assert abs(picks.count(CANDIDATE) / len(picks) - 0.2) < 0.01


def test_a_variant_with_zero_weight_is_never_picked():
    assert {pick({BASELINE: 1.0, CANDIDATE: 0.0}, b / 100) for b in range(100)} == {BASELINE}


def test_sticky_key_prefers_the_header_then_a_scalar_body_field():
    assert sticky_key("h", [{"user_id": "u"}], "user_id") == "h"
    assert sticky_key(None, [{"user_id": 17}], "user_id") == "17"
    assert sticky_key(None, [{"user_id": {"nested": 1}}], "user_id") is None
    assert sticky_key(None, [{"user_id": True}], "user_id") is None
    assert sticky_key(None, [{}], "user_id") is None


def test_a_router_past_its_lease_serves_only_the_fallback_and_never_applies_an_older_epoch():
    from deployments.contracts import Traffic
    from deployments.routing import effective_traffic, newer_or_same

    split = Traffic(weights={"baseline": 0.5, "candidate": 0.5}, shadow="candidate", epoch=7, lease_s=3.0)
    assert effective_traffic(split, silent_s=2.9) == (split.weights, "candidate", False)
    assert effective_traffic(split, silent_s=3.1) == ({"baseline": 1.0}, None, True)
    assert effective_traffic(Traffic(weights={"candidate": 1.0}), silent_s=1e9)[2] is False   # static: no lease
    assert not newer_or_same(split, Traffic(epoch=6)) and newer_or_same(split, Traffic(epoch=7))
