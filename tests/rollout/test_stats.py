"""A/B significance tests checked against scipy (and closed forms) on known data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from deployments.rollout.stats import mann_whitney, run_test, sequential, two_proportion, welch


def test_two_proportion_p_value_matches_scipys_chi_square_without_continuity_correction():
    result = two_proportion(450, 500, 420, 500)
    chi2 = sps.chi2_contingency([[450, 50], [420, 80]], correction=False)
    assert result.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
    assert result.effect == pytest.approx(0.84 - 0.90)
    se = np.sqrt(0.9 * 0.1 / 500 + 0.84 * 0.16 / 500)
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.06 - 1.959964 * se, -0.06 + 1.959964 * se), rel=1e-5)
    assert result.decision == "candidate_worse"


def test_two_proportion_with_equal_rates_is_no_difference():
    result = two_proportion(90, 100, 90, 100)
    assert result.p_value == pytest.approx(1.0) and result.decision == "no_difference"


def test_welch_matches_scipy_ttest_with_unequal_variances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 1, 80), rng.normal(10.6, 3, 60)
    result = welch(list(a), list(b))
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert result.effect == pytest.approx(b.mean() - a.mean())
    ci = ref.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))


def test_welch_decides_by_direction_when_lower_is_better():
    result = welch([100.0, 101, 99, 100, 102] * 10, [120.0, 121, 119, 122, 118] * 10, higher_is_better=False)
    assert result.decision == "candidate_worse"


def test_mann_whitney_matches_scipy_and_reports_the_hodges_lehmann_shift():
    rng = np.random.default_rng(2)
    a, b = rng.exponential(10, 120), rng.exponential(10, 100) + 3.0
    result = mann_whitney(list(a), list(b), higher_is_better=False)
    assert result.p_value == pytest.approx(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    assert result.effect == pytest.approx(np.median(np.subtract.outer(b, a)))
    assert result.ci_low < result.effect < result.ci_high
    assert result.decision == "candidate_worse"


def test_mann_whitney_interval_covers_a_known_shift():
    a = list(np.arange(100.0))
    b = [x + 5 for x in a]
    result = mann_whitney(a, b)
    assert result.ci_low <= 5.0 <= result.ci_high and result.effect == pytest.approx(5.0)


def test_sequential_test_p_value_is_one_over_the_mixture_likelihood_ratio():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 200), rng.normal(0.5, 1, 200)
    result = sequential(list(a), list(b), tau=0.3)
    v = a.var(ddof=1) / 200 + b.var(ddof=1) / 200
    theta = b.mean() - a.mean()
    lam = np.sqrt(v / (v + 0.09)) * np.exp(theta**2 * 0.09 / (2 * v * (v + 0.09)))
    assert result.p_value == pytest.approx(min(1.0, 1 / lam))
    assert result.decision == "candidate_better" and result.ci_low > 0


def test_sequential_p_value_never_increases_between_looks():
    result = sequential([0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], previous_p=0.2)
    assert result.p_value <= 0.2


def test_sequential_test_keeps_false_positives_below_alpha_when_peeking_after_every_batch():
    """The property fixed-horizon tests lack: under no effect, stopping at the first p < alpha stays rare."""
    rng = np.random.default_rng(4)
    false_positives = 0
    for _ in range(200):
        a, b = rng.binomial(1, 0.9, 1000).astype(float), rng.binomial(1, 0.9, 1000).astype(float)
        p = 1.0
        for n in range(50, 1001, 50):
            p = sequential(list(a[:n]), list(b[:n]), tau=0.05, previous_p=p).p_value
            if p < 0.05:
                false_positives += 1
                break
    assert false_positives / 200 <= 0.05


def test_sequential_test_stops_early_on_a_large_effect():
    rng = np.random.default_rng(5)
    a, b = rng.binomial(1, 0.95, 400).astype(float), rng.binomial(1, 0.7, 400).astype(float)
    result = sequential(list(a), list(b), tau=0.05)
    assert result.decision == "candidate_worse"


def test_run_test_treats_success_samples_as_counts_for_the_two_proportion_test():
    result = run_test("two_proportion", [1.0] * 90 + [0.0] * 10, [1.0] * 80 + [0.0] * 20, 0.05, True)
    assert result.n_baseline == 100 and result.baseline_estimate == 0.9 and result.candidate_estimate == 0.8
