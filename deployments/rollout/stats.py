"""Significance tests for A/B mode: effect (candidate − baseline), confidence interval, p-value, decision.

* ``two_proportion``: pooled z test for success rates, Wald interval for the difference.
* ``mann_whitney``: Mann–Whitney U (scipy), Hodges–Lehmann shift with its distribution-free interval.
* ``welch``: Welch's t test (scipy), Welch–Satterthwaite interval for the difference of means.
* ``sequential``: mixture SPRT (Johari et al., "Always valid inference", 2017) on the difference of
  means with a normal mixture; its p-value and confidence sequence stay valid when checked after
  every batch, so the experiment may stop early without inflating false positives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

Decision = Literal["candidate_better", "candidate_worse", "no_difference", "continue"]


@dataclass
class TestResult:
    test: str
    effect: float                  # candidate − baseline (difference of rates, means, or HL shift)
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float
    decision: Decision
    n_baseline: int
    n_candidate: int
    baseline_estimate: float
    candidate_estimate: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decide(p_value: float, effect: float, alpha: float, higher_is_better: bool, final: bool = True) -> Decision:
    if p_value >= alpha:
        return "no_difference" if final else "continue"
    return "candidate_better" if (effect > 0) == higher_is_better else "candidate_worse"


def two_proportion(successes_b: int, n_b: int, successes_c: int, n_c: int, alpha: float = 0.05,
                   higher_is_better: bool = True) -> TestResult:
    """Two-sided pooled z test of p_candidate = p_baseline; Wald interval for the difference."""
    if min(n_b, n_c) < 1:
        raise ValueError("both variants need at least one sample")
    p_b, p_c = successes_b / n_b, successes_c / n_c
    pooled = (successes_b + successes_c) / (n_b + n_c)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_b + 1 / n_c))
    effect = p_c - p_b
    p_value = 1.0 if se_pooled == 0 else float(2 * sps.norm.sf(abs(effect) / se_pooled))
    se = math.sqrt(p_b * (1 - p_b) / n_b + p_c * (1 - p_c) / n_c)
    z = float(sps.norm.ppf(1 - alpha / 2))
    return TestResult("two_proportion", effect, effect - z * se, effect + z * se, p_value, alpha,
                      _decide(p_value, effect, alpha, higher_is_better), n_b, n_c, p_b, p_c)


def welch(baseline: list[float], candidate: list[float], alpha: float = 0.05,
          higher_is_better: bool = True) -> TestResult:
    """Welch's unequal-variance t test on means."""
    a, b = np.asarray(baseline, float), np.asarray(candidate, float)
    if min(len(a), len(b)) < 2:
        raise ValueError("both variants need at least two samples")
    res = sps.ttest_ind(b, a, equal_var=False)
    effect = float(b.mean() - a.mean())
    ci = res.confidence_interval(1 - alpha)
    p_value = float(res.pvalue) if not math.isnan(res.pvalue) else 1.0
    return TestResult("welch", effect, float(ci.low), float(ci.high), p_value, alpha,
                      _decide(p_value, effect, alpha, higher_is_better), len(a), len(b),
                      float(a.mean()), float(b.mean()))


MAX_PAIRWISE = 2_000   # per side, for the Hodges–Lehmann interval (n_a * n_b differences)


def mann_whitney(baseline: list[float], candidate: list[float], alpha: float = 0.05,
                 higher_is_better: bool = True) -> TestResult:
    """Mann–Whitney U (two-sided) with the Hodges–Lehmann shift and its rank-based interval."""
    a, b = np.asarray(baseline, float), np.asarray(candidate, float)
    if min(len(a), len(b)) < 1:
        raise ValueError("both variants need at least one sample")
    p_value = float(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    rng = np.random.default_rng(0)
    sa = a if len(a) <= MAX_PAIRWISE else rng.choice(a, MAX_PAIRWISE, replace=False)
    sb = b if len(b) <= MAX_PAIRWISE else rng.choice(b, MAX_PAIRWISE, replace=False)
    diffs = np.sort((sb[:, None] - sa[None, :]).ravel())
    n_a, n_b, n = len(sa), len(sb), diffs.size
    effect = float(np.median(diffs))
    z = float(sps.norm.ppf(1 - alpha / 2))
    k = math.floor(n_a * n_b / 2 - z * math.sqrt(n_a * n_b * (n_a + n_b + 1) / 12))
    k = min(max(k, 0), n - 1)
    return TestResult("mann_whitney", effect, float(diffs[k]), float(diffs[n - 1 - k]), p_value, alpha,
                      _decide(p_value, effect, alpha, higher_is_better), len(a), len(b),
                      float(np.median(a)), float(np.median(b)))


def sequential(baseline: list[float], candidate: list[float], alpha: float = 0.05,
               higher_is_better: bool = True, tau: float | None = None,
               previous_p: float = 1.0) -> TestResult:
    """Mixture SPRT on the difference of means; ``previous_p`` carries the running minimum between looks.

    Λ = sqrt(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²))), V = s²_b/n_b + s²_c/n_c;
    always-valid p = min(previous_p, 1/Λ); the confidence sequence is {θ : Λ(θ) < 1/α}.
    ``tau`` is the mixture's standard deviation (the effect size it is tuned for); default
    a tenth of the pooled standard deviation. Decision ``continue`` until p < α.
    """
    a, b = np.asarray(baseline, float), np.asarray(candidate, float)
    if min(len(a), len(b)) < 2:
        return TestResult("sequential", 0.0, -math.inf, math.inf, previous_p, alpha, "continue", len(a), len(b),
                          float(a.mean()) if len(a) else math.nan, float(b.mean()) if len(b) else math.nan)
    var = max(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b), 1e-12)
    if tau is None:
        pooled_sd = math.sqrt(max((a.var(ddof=1) + b.var(ddof=1)) / 2, 1e-12))
        tau = 0.1 * pooled_sd
    tau2 = tau * tau
    effect = float(b.mean() - a.mean())
    log_lambda = 0.5 * math.log(var / (var + tau2)) + effect**2 * tau2 / (2 * var * (var + tau2))
    p_value = min(previous_p, 1.0, math.exp(-log_lambda) if log_lambda < 700 else 0.0)
    half = math.sqrt(2 * var * (var + tau2) / tau2 * (math.log(1 / alpha) + 0.5 * math.log((var + tau2) / var)))
    return TestResult("sequential", effect, effect - half, effect + half, p_value, alpha,
                      _decide(p_value, effect, alpha, higher_is_better, final=False), len(a), len(b),
                      float(a.mean()), float(b.mean()))


def run_test(test: str, baseline: list[float], candidate: list[float], alpha: float, higher_is_better: bool,
             tau: float | None = None, previous_p: float = 1.0) -> TestResult:
    """Dispatch on the spec's test name; success metrics arrive as 0/1 samples."""
    if test == "two_proportion":
        return two_proportion(int(sum(baseline)), len(baseline), int(sum(candidate)), len(candidate),
                              alpha, higher_is_better)
    if test == "welch":
        return welch(baseline, candidate, alpha, higher_is_better)
    if test == "mann_whitney":
        return mann_whitney(baseline, candidate, alpha, higher_is_better)
    if test == "sequential":
        return sequential(baseline, candidate, alpha, higher_is_better, tau, previous_p)
    raise ValueError(f"unknown test {test!r}")


# ---- gates: one-sided bounds the canary checks use -------------------------------------------------------------

def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion at ``confidence``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = float(sps.norm.ppf(confidence))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_increase_lower_bound(x_c: int, n_c: int, x_b: int, n_b: int, confidence: float = 0.95) -> float:
    """One-sided lower bound of p_candidate − p_baseline (Newcombe's hybrid score interval, method 10).

    Above the allowed increase ⇒ the candidate's rate is worse than the baseline's *on the same interval*
    at ``confidence``: that, not a point estimate on a handful of requests, is what fails a check.
    """
    p_c, p_b = x_c / n_c, x_b / n_b
    lo_c, _ = wilson(x_c, n_c, confidence)
    _, hi_b = wilson(x_b, n_b, confidence)
    return (p_c - p_b) - math.sqrt((p_c - lo_c) ** 2 + (hi_b - p_b) ** 2)


def slower_than(baseline: list[float], candidate: list[float], ratio: float) -> float:
    """One-sided Mann–Whitney p-value that the candidate's latencies exceed ``ratio`` × the baseline's.

    Candidate latencies are divided by ``ratio`` first, so a small p says "slower by more than the
    allowed ratio", not merely "slower". Returns 1.0 when either side is empty.
    """
    if not baseline or not candidate:
        return 1.0
    scaled = np.asarray(candidate, float) / ratio
    return float(sps.mannwhitneyu(scaled, np.asarray(baseline, float), alternative="greater").pvalue)
