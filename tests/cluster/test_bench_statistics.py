"""The benchmarks' statistics that decide a verdict: the median's confidence interval and the router-rounds verdict."""

from __future__ import annotations

import random

import pytest

from benchmarks.llm_serve_bench import _rounds_verdict
from benchmarks.report import median_ci


def test_the_median_interval_takes_the_order_statistics_a_binomial_gives():
    values = [float(v) for v in range(30)]
    random.Random(0).shuffle(values)
    assert median_ci(values) == (9.0, 20.0)   # n = 30: the 10th and 21st smallest
    assert median_ci([float(v) for v in range(6)]) == (0.0, 5.0)   # n = 6: the fewest with 95 %, [min, max]


def test_the_median_interval_covers_at_least_its_level():
    """5000 samples of 30 from a symmetric distribution around 0: the interval holds 0 in >= 95 % of them
    (exact coverage 95.7 %; a miss rate past 5 % has probability < 1e-4 with correct ranks)."""
    rng = random.Random(1)
    hits = sum(lo <= 0 <= hi for lo, hi in (median_ci([rng.gauss(0, 1) for _ in range(30)]) for _ in range(5000)))
    assert hits / 5000 >= 0.945


@pytest.mark.parametrize("n", [0, 1, 5])
def test_too_few_values_for_the_level_are_refused(n):
    with pytest.raises(ValueError):
        median_ci([1.0] * n)


@pytest.mark.parametrize(("low", "high", "verdict"), [
    (-0.03, 0.049, "<= 5 % shown"), (0.051, 0.09, "more than 5 %"), (-0.02, 0.06, "not resolved"),
])
def test_the_router_target_is_shown_only_when_the_whole_interval_is_under_it(low, high, verdict):
    row = {"path": "router-colocated", "concurrency": 16, "rounds": 30, "ttft_p50_added": (low + high) / 2,
           "ci95_low": low, "ci95_high": high}
    assert _rounds_verdict(row).split(": ")[-1].startswith(verdict)
