"""Window aggregation and gates: what the routers served → pass / fail / insufficient data.

Routers push :class:`~deployments.contracts.VariantWindow` deltas every 0.25 s; the
controller stamps them on arrival into a :class:`WindowLog` and, each analysis interval,
aggregates the last interval per variant and judges the candidate *against the baseline
over the same interval*: a check fails only when a one-sided bound at the spec's confidence
says the candidate is worse (Wilson bounds for rates, Newcombe's interval for the difference
of two rates, a one-sided Mann–Whitney test for latency). Server errors (5xx) and client
errors (4xx) are judged alike: a candidate that rejects requests the baseline accepts is a
regression. Pure: no clock, no I/O — callers pass ``now``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from deployments.contracts import BASELINE, CANDIDATE, OUTCOME_CORRECT, OUTCOMES, VariantWindow
from deployments.rollout.spec import LATENCY_METRIC, SUCCESS_METRIC, MetricBound, RolloutSpec, Thresholds
from deployments.rollout.stats import rate_increase_lower_bound, slower_than, welch, wilson

Status = Literal["pass", "fail", "insufficient"]


@dataclass
class VariantStats:
    variant: str
    requests: int = 0
    errors: int = 0                     # 5xx: the server's fault
    error_rate: float = 0.0
    client_errors: int = 0              # 4xx: judged against the baseline's share on the same traffic
    client_error_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    model_metrics: dict[str, float] = field(default_factory=dict)   # name → mean
    versions: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)   # pooled; left out of to_dict
    metric_samples: dict[str, list[float]] = field(default_factory=dict, repr=False)   # pooled; left out too
    outcomes: dict[str, list[float]] = field(default_factory=dict, repr=False)   # pooled feedback samples by name


@dataclass
class Check:
    name: str
    status: Status
    value: float | None = None
    threshold: float | None = None
    reason: str = ""


@dataclass
class Verdict:
    status: Status
    checks: list[Check]
    stats: dict[str, VariantStats]

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for s in data["stats"].values():
            s.pop("latencies_ms", None)
            s.pop("metric_samples", None)
            s["outcomes"] = {name: {"n": len(v), "mean": sum(v) / len(v)} for name, v in s["outcomes"].items() if v}
        return data


def quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (same as numpy's default), ``q`` in [0, 1]."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def aggregate(windows: Iterable[VariantWindow], include_shadow: bool = False) -> dict[str, VariantStats]:
    """Sum request/error counts and pool latencies and model metrics per variant."""
    out: dict[str, VariantStats] = {}
    for w in windows:
        if w.shadow and not include_shadow:
            continue
        s = out.setdefault(w.variant, VariantStats(w.variant))
        s.requests += w.requests
        s.errors += w.errors_5xx
        s.client_errors += w.errors_4xx
        if w.version is not None and str(w.version) not in s.versions:
            s.versions.append(str(w.version))
        s.latencies_ms.extend(w.latencies_ms)
        for name, samples in w.model_metrics.items():
            s.metric_samples.setdefault(name, []).extend(samples)
        for name, samples in w.outcomes.items():
            s.outcomes.setdefault(name, []).extend(samples)
    for s in out.values():
        s.error_rate = s.errors / s.requests if s.requests else 0.0
        s.client_error_rate = s.client_errors / s.requests if s.requests else 0.0
        s.p50_ms = quantile(s.latencies_ms, 0.50)
        s.p99_ms = quantile(s.latencies_ms, 0.99)
        s.model_metrics = {n: sum(v) / len(v) for n, v in s.metric_samples.items() if v}
    return out


def evaluate(spec: RolloutSpec, stats: dict[str, VariantStats],
             step: dict[str, VariantStats] | None = None) -> Verdict:
    """Judge the candidate on the last interval (``stats``) and, when given, on its whole step so far (``step``).

    Fewer candidate requests than ``min_requests_per_check`` → ``insufficient``. A check fails only
    when a one-sided bound shows the candidate worse, on the interval (a sudden regression) or on the
    step (a small one that needs more data to show). A comparison with the baseline needs as many
    baseline requests; without them that check is ``insufficient`` and the absolute limits decide.

    ``pass`` (which lets a step advance) needs evidence the other way too: the candidate's error
    rate over the step must be *shown* below ``max_error_rate`` (its upper bound under it). Until
    then the verdict is ``insufficient``: a candidate is never promoted for lack of evidence.
    """
    th = spec.thresholds
    cand = stats.get(CANDIDATE, VariantStats(CANDIDATE))
    if cand.requests < th.min_requests_per_check:
        reason = f"candidate served {cand.requests} requests (< {th.min_requests_per_check} to judge)"
        return Verdict("insufficient", [Check("requests", "insufficient", cand.requests,
                                              th.min_requests_per_check, reason)], stats)
    checks = _checks(spec, stats)
    if step is not None and not any(c.status == "fail" for c in checks):
        for check in _checks(spec, step):
            if check.status == "fail":
                checks.append(Check(f"step:{check.name}", "fail", check.value, check.threshold,
                                    f"over the step: {check.reason}"))
    checks += _outcome_checks(th, step or stats)   # labels arrive late: judged over the whole step
    if any(c.status == "fail" for c in checks):
        return Verdict("fail", checks, stats)
    evidence = (step or stats).get(CANDIDATE, cand)
    if th.max_error_rate is not None:
        _, high = wilson(evidence.errors, evidence.requests, th.confidence)
        if high > th.max_error_rate:
            checks.append(Check("evidence", "insufficient", high, th.max_error_rate,
                                f"candidate error rate {evidence.error_rate:.1%} ({evidence.errors}/"
                                f"{evidence.requests}) is not yet shown below {th.max_error_rate:.1%} (upper bound "
                                f"{high:.1%} at {th.confidence:.0%}); more requests before it may advance"))
            return Verdict("insufficient", checks, stats)
    if any(c.status == "insufficient" and c.name.startswith(("outcome:", "metric:")) for c in checks):
        return Verdict("insufficient", checks, stats)   # a gated metric or label unmeasured: never advances
    return Verdict("pass", checks, stats)


def _checks(spec: RolloutSpec, stats: dict[str, VariantStats]) -> list[Check]:
    """Every gate of the spec on one set of per-variant stats."""
    th = spec.thresholds
    cand = stats.get(CANDIDATE, VariantStats(CANDIDATE))
    base = stats.get(BASELINE)
    if cand.requests < th.min_requests_per_check:
        return []
    comparable = base is not None and base.requests >= th.min_requests_per_check
    checks: list[Check] = []
    if th.max_error_rate is not None:
        low, _ = wilson(cand.errors, cand.requests, th.confidence)
        checks.append(_upper("error_rate", low, th.max_error_rate,
                             f"candidate error rate {cand.error_rate:.1%} ({cand.errors}/{cand.requests})"
                             f" > {th.max_error_rate:.1%} (lower bound {low:.1%} at {th.confidence:.0%})"))
    checks += _rate_vs_baseline("error_rate_vs_baseline", "error rate (5xx)", cand.errors, base.errors if base else 0,
                                cand, base, th.max_error_rate_increase, th, comparable)
    checks += _rate_vs_baseline("client_errors_vs_baseline", "client-error (4xx) share", cand.client_errors,
                                base.client_errors if base else 0, cand, base, th.max_client_error_increase, th,
                                comparable)
    if th.max_latency_ratio_vs_baseline is not None:
        checks.append(_latency_vs_baseline(cand, base, th, comparable))
    if th.max_p99_ms is not None and cand.p99_ms is not None:
        checks.append(_upper("p99_ms", cand.p99_ms, th.max_p99_ms,
                             f"candidate p99 {cand.p99_ms:.1f} ms > {th.max_p99_ms:g} ms"))
    if th.max_p99_ratio_vs_baseline is not None and cand.p99_ms is not None:
        if not comparable or base is None or base.p99_ms is None:
            checks.append(Check("p99_ratio", "insufficient", reason="too few baseline requests to compare p99"))
        else:
            ratio = cand.p99_ms / max(base.p99_ms, 1e-9)
            checks.append(_upper("p99_ratio", ratio, th.max_p99_ratio_vs_baseline,
                                 f"candidate p99 {cand.p99_ms:.1f} ms is {ratio:.2f}x baseline "
                                 f"{base.p99_ms:.1f} ms (> {th.max_p99_ratio_vs_baseline:g}x)"))
    for name, bound in th.model_metrics.items():
        checks += _metric_checks(name, bound, cand, base, th)
    return checks


def _metric_checks(name: str, bound: MetricBound, cand: VariantStats, base: VariantStats | None,
                   th: Thresholds) -> list[Check]:
    """A model metric's mean (e.g. ``mean_logprob``) against its absolute bounds and against the baseline's mean.

    No candidate samples: ``metric:`` fails once the candidate answered ``min_requests_per_check`` requests
    without reporting it (a version that cannot be judged on a gate is not promoted past it, and does not
    hold its traffic share forever either: fail closed); until then insufficient. Too few baseline samples
    to compare: ``metric_vs_baseline:`` insufficient, which does not hold the step (the absolute bounds decide).
    """
    value = cand.model_metrics.get(name)
    if value is None:
        answered = cand.requests - cand.errors - cand.client_errors
        status: Status = "fail" if answered >= th.min_requests_per_check else "insufficient"
        return [Check(f"metric:{name}", status, reason=f"candidate answered {answered} requests and reported no "
                                                         f"samples of model metric {name!r}; it cannot be judged")]
    checks = []
    if bound.min is not None and value < bound.min:
        checks.append(Check(f"metric:{name}", "fail", value, bound.min,
                            f"candidate {name} {value:.4g} < {bound.min:g}"))
    elif bound.max is not None and value > bound.max:
        checks.append(Check(f"metric:{name}", "fail", value, bound.max,
                            f"candidate {name} {value:.4g} > {bound.max:g}"))
    elif bound.min is not None or bound.max is not None:
        checks.append(Check(f"metric:{name}", "pass", value))
    ours, theirs = cand.metric_samples.get(name, []), (base.metric_samples.get(name, []) if base else [])
    for margin, lower_is_worse in ((bound.max_decrease_vs_baseline, True), (bound.max_increase_vs_baseline, False)):
        if margin is None:
            continue
        if len(theirs) < th.min_requests_per_check or len(ours) < 2:
            checks.append(Check(f"metric_vs_baseline:{name}", "insufficient",
                                reason=f"too few baseline samples of {name!r} to compare"))
            continue
        mean_b = sum(theirs) / len(theirs)
        worse = (_mean_difference_lower_bound(theirs, ours, th.confidence) if lower_is_worse
                 else _mean_difference_lower_bound(ours, theirs, th.confidence))
        checks.append(_upper(f"metric_vs_baseline:{name}", worse, margin,
                             f"candidate {name} {value:.4g} (n={len(ours)}) is {'below' if lower_is_worse else 'above'}"
                             f" the baseline's {mean_b:.4g} (n={len(theirs)}) by more than {margin:g} (lower bound "
                             f"of the difference {worse:.4g} at {th.confidence:.0%})"))
    return checks


def _outcome_checks(th: Thresholds, stats: dict[str, VariantStats]) -> list[Check]:
    """Outcomes from feedback, candidate vs baseline: fail when a one-sided bound at the spec's confidence shows
    the candidate worse by more than the margin; insufficient until both sides have ``min_labelled`` samples.

    ``correct`` is a rate: Newcombe's bound on the difference of error shares (as the 5xx gate). Continuous
    outcomes (``reward``, ``abs_error``): Welch's interval for the difference of means, one-sided.
    """
    checks = []
    for name, bound in th.outcomes.items():
        cand = stats.get(CANDIDATE, VariantStats(CANDIDATE)).outcomes.get(name, [])
        base = stats.get(BASELINE, VariantStats(BASELINE)).outcomes.get(name, [])
        if min(len(cand), len(base)) < bound.min_labelled:
            checks.append(Check(f"outcome:{name}", "insufficient", min(len(cand), len(base)), bound.min_labelled,
                                f"{len(cand)} candidate / {len(base)} baseline labelled {name!r} outcomes in the "
                                f"step (< {bound.min_labelled} each to judge); waiting for feedback"))
            continue
        mean_c, mean_b = sum(cand) / len(cand), sum(base) / len(base)
        if OUTCOMES[name]:   # higher is better: how much lower the candidate's is, at least
            assert bound.max_decrease is not None
            margin, worse = bound.max_decrease, _difference_lower_bound(name, base, cand, th.confidence)
        else:                # lower is better: how much higher
            assert bound.max_increase is not None
            margin, worse = bound.max_increase, _difference_lower_bound(name, cand, base, th.confidence)
        checks.append(_upper(f"outcome:{name}", worse, margin,
                             f"candidate {name} {mean_c:.4g} (n={len(cand)}) is worse than the baseline's "
                             f"{mean_b:.4g} (n={len(base)}) by more than {margin:g} over the step (lower bound "
                             f"of the difference {worse:.4g} at {th.confidence:.0%})"))
    return checks


def _difference_lower_bound(name: str, a: list[float], b: list[float], confidence: float) -> float:
    """One-sided lower bound of mean(a) − mean(b) at ``confidence`` (0/1 ``correct``: Newcombe, on the misses)."""
    if name == OUTCOME_CORRECT:
        misses_a, misses_b = round(len(a) - sum(a)), round(len(b) - sum(b))
        return rate_increase_lower_bound(misses_b, len(b), misses_a, len(a), confidence)
    return _mean_difference_lower_bound(a, b, confidence)


def _mean_difference_lower_bound(a: list[float], b: list[float], confidence: float) -> float:
    """One-sided lower bound of mean(a) − mean(b) at ``confidence``: Welch's interval (the effect when both
    samples are constant and the interval is undefined)."""
    result = welch(b, a, alpha=2 * (1 - confidence))   # interval of mean(a) − mean(b), two-sided at 2c − 1
    return result.effect if math.isnan(result.ci_low) else result.ci_low


def _rate_vs_baseline(name: str, what: str, x_c: int, x_b: int, cand: VariantStats, base: VariantStats | None,
                      margin: float | None, th: Thresholds, comparable: bool) -> list[Check]:
    """Fail when candidate − baseline of a rate is above ``margin`` at the spec's one-sided confidence."""
    if margin is None:
        return []
    if not comparable or base is None:
        return [Check(name, "insufficient", reason=f"too few baseline requests to compare the {what}")]
    low = rate_increase_lower_bound(x_c, cand.requests, x_b, base.requests, th.confidence)
    reason = (f"candidate {what} {x_c / cand.requests:.1%} ({x_c}/{cand.requests}) exceeds the baseline's "
              f"{x_b / base.requests:.1%} ({x_b}/{base.requests}) on the same interval by more than "
              f"{margin:.1%} (lower bound of the difference {low:+.1%} at {th.confidence:.0%})")
    return [_upper(name, low, margin, reason)]


def _latency_vs_baseline(cand: VariantStats, base: VariantStats | None, th: Thresholds, comparable: bool) -> Check:
    assert th.max_latency_ratio_vs_baseline is not None
    ratio = th.max_latency_ratio_vs_baseline
    if not comparable or base is None:
        return Check("latency_vs_baseline", "insufficient", reason="too few baseline requests to compare latency")
    p_value = slower_than(base.latencies_ms, cand.latencies_ms, ratio)
    alpha = 1 - th.confidence
    if p_value < alpha:
        shift = (cand.p50_ms or 0.0) / max(base.p50_ms or 0.0, 1e-9)
        return Check("latency_vs_baseline", "fail", p_value, alpha,
                     f"candidate latency is more than {ratio:g}x the baseline's on the same interval "
                     f"(median ratio {shift:.2f}, one-sided Mann-Whitney p={p_value:.2g})")
    return Check("latency_vs_baseline", "pass", p_value, alpha)


def _upper(name: str, value: float, limit: float, reason: str) -> Check:
    return Check(name, "fail" if value > limit else "pass", value, limit, reason if value > limit else "")


def samples(windows: Iterable[VariantWindow], variant: str, metric: str) -> list[float]:
    """Per-request samples of one metric for one variant (A/B tests). Shadow copies never count."""
    out: list[float] = []
    for w in windows:
        if w.variant != variant or w.shadow:
            continue
        if metric == SUCCESS_METRIC:
            out += [1.0] * (w.requests - w.errors_5xx) + [0.0] * w.errors_5xx
        elif metric == LATENCY_METRIC:
            out += list(w.latencies_ms)
        elif metric in OUTCOMES:   # joined from feedback: labelled requests only, so a test waits for labels
            out += list(w.outcomes.get(metric, []))
        else:
            out += list(w.model_metrics.get(metric, []))
    return out


def samples_per_key(windows: Iterable[VariantWindow], variant: str, metric: str) -> list[float] | None:
    """One sample per sticky key (a user's success rate or mean latency), or None when assignment is not sticky.

    With sticky assignment a user's requests all go to one variant and are correlated; testing them
    as independent requests overstates the evidence. Aggregating per key makes the user the unit.
    Only when every live request of the variant carried a key; model metrics have no per-key sums.
    """
    if metric not in (SUCCESS_METRIC, LATENCY_METRIC):
        return None
    merged: dict[str, list[float]] = {}
    for w in windows:
        if w.variant != variant or w.shadow:
            continue
        if sum(n for n, _, _ in w.by_key.values()) != w.requests:
            return None
        for key, (n, errors, latency) in w.by_key.items():
            into = merged.setdefault(key, [0, 0, 0.0])
            into[0] += n
            into[1] += errors
            into[2] += latency
    if not merged:
        return None
    if metric == SUCCESS_METRIC:
        return [1.0 - errors / n for n, errors, _ in merged.values()]
    return [latency / n for n, _, latency in merged.values()]


@dataclass
class _Stamped:
    at: float
    router_id: str
    window: VariantWindow


class WindowLog:
    """Windows as they arrived, stamped with the controller's clock; bounded by age."""

    def __init__(self, retention_s: float = 3600.0) -> None:
        self.retention_s = retention_s
        self._items: deque[_Stamped] = deque()

    def add(self, now: float, router_id: str, windows: Iterable[VariantWindow]) -> None:
        batch = list(windows)
        for w in batch:
            self._items.append(_Stamped(now, router_id, w))
        while self._items and self._items[0].at < now - self.retention_s:
            self._items.popleft()

    def since(self, start: float, end: float | None = None) -> list[VariantWindow]:
        return [s.window for s in self._items if s.at >= start and (end is None or s.at < end)]

    def requests_since(self, start: float, variant: str, shadow: bool = False) -> int:
        """Live requests of ``variant`` since ``start``; with ``shadow``, its mirrored copies instead."""
        return sum(w.requests for w in self.since(start) if w.variant == variant and w.shadow == shadow)
