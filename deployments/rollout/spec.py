"""The rollout spec: what a user writes in ``SPEC.yaml`` for ``rayline canary start``.

Validated once, at the edge, so the state machine can trust every field. Model references
are aliases (``champion``, ``@champion``) or versions (``3``, ``v3``), optionally written as
full ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` URIs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.yamlfile import read_yaml_mapping
from deployments.contracts import OUTCOME_CORRECT, OUTCOMES
from deployments.rollout.errors import SpecError
from deployments.rollout.quality import direction_of

SUCCESS_METRIC = "success"       # per request: 1 when served without a 5xx
LATENCY_METRIC = "latency_ms"    # per request latency


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricBound(_Strict):
    """Bounds on the candidate's mean of a model metric the model server reports (a classifier's ``confidence``,
    a language model's ``mean_logprob``), absolute and against the baseline's mean on the same interval.

    ``min``/``max`` bound the candidate's mean. ``max_decrease_vs_baseline`` (a metric where higher is better)
    / ``max_increase_vs_baseline`` (lower is better) fail the check when a one-sided Welch bound at the spec's
    confidence shows the candidate's mean below / above the baseline's by more than the margin; with too few
    baseline samples to compare (a canary's 100 % step) that comparison is insufficient and the absolute bounds
    decide. A candidate with no samples of a gated metric is never passed: the step waits (fails closed).
    """

    min: float | None = None
    max: float | None = None
    max_decrease_vs_baseline: float | None = Field(None, ge=0.0)
    max_increase_vs_baseline: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _some_bound(self) -> MetricBound:
        if all(v is None for v in (self.min, self.max, self.max_decrease_vs_baseline, self.max_increase_vs_baseline)):
            raise ValueError("a model metric gate needs min, max, max_decrease_vs_baseline or "
                             "max_increase_vs_baseline")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class OutcomeBound(_Strict):
    """How much worse than the baseline the candidate's outcome from feedback may be, judged on labelled requests.

    ``correct`` and ``reward`` (higher is better) take ``max_decrease``; ``abs_error`` takes ``max_increase``.
    Until both variants have ``min_labelled`` outcomes in the step, the check is insufficient: the step waits.
    """

    max_decrease: float | None = Field(None, ge=0.0)
    max_increase: float | None = Field(None, ge=0.0)
    min_labelled: int = Field(50, ge=2, description="labelled requests per variant in the step before it is judged")


class Thresholds(_Strict):
    """Gates judged on the candidate *against the baseline over the same interval*, at ``confidence``.

    A rate check fails only when the data show, one-sided at ``confidence``, that the candidate is
    worse: its Wilson lower bound above ``max_error_rate``, or the Newcombe (Wilson-score) lower bound of
    candidate − baseline above ``max_error_rate_increase`` (5xx) / ``max_client_error_increase`` (4xx).
    """

    max_error_rate: float | None = Field(0.05, ge=0.0, le=1.0)
    max_error_rate_increase: float | None = Field(0.01, ge=0.0, le=1.0,
                                                  description="5xx share over the baseline's, same interval")
    max_client_error_increase: float | None = Field(0.01, ge=0.0, le=1.0,
                                                    description="4xx share over the baseline's, same traffic")
    max_latency_ratio_vs_baseline: float | None = Field(
        None, gt=1.0, description="median latency ratio the candidate may not significantly exceed")
    confidence: float = Field(0.99, ge=0.5, lt=1.0, description="one-sided confidence of every comparison")
    max_p99_ms: float | None = Field(None, gt=0)
    max_p99_ratio_vs_baseline: float | None = Field(None, gt=0)
    model_metrics: dict[str, MetricBound] = Field(default_factory=dict)
    min_requests_per_check: int = Field(10, ge=1, description="candidate (and baseline, to compare) requests "
                                                              "in one interval to judge it")
    outcomes: dict[str, OutcomeBound] = Field(
        default_factory=dict, description="outcomes joined from feedback (correct, abs_error, reward) → how much "
                                          "worse than the baseline's over the step the candidate's may be")

    @field_validator("outcomes")
    @classmethod
    def _outcome_direction(cls, outcomes: dict[str, OutcomeBound]) -> dict[str, OutcomeBound]:
        for name, bound in outcomes.items():
            if name not in OUTCOMES:
                raise ValueError(f"unknown outcome {name!r}; one of {sorted(OUTCOMES)}")
            wanted, other = ("max_decrease", "max_increase") if OUTCOMES[name] else ("max_increase", "max_decrease")
            if getattr(bound, wanted) is None or getattr(bound, other) is not None:
                raise ValueError(f"outcome {name!r} ({'higher' if OUTCOMES[name] else 'lower'} is better) takes "
                                 f"{wanted}, not {other}")
        return outcomes


class ABSettings(_Strict):
    """A fixed-split experiment that ends with a significance test instead of steps."""

    split: float = Field(50.0, gt=0, lt=100, description="percent of traffic to the candidate")
    metric: str = SUCCESS_METRIC
    test: Literal["two_proportion", "mann_whitney", "welch", "sequential"] = "two_proportion"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    min_samples: int = Field(200, ge=2, description="per variant, before a fixed-horizon test is run")
    duration_s: float | None = Field(None, gt=0, description="end after this long even if min_samples not met")
    higher_is_better: bool = True
    min_effect: float | None = Field(None, gt=0, description="sequential test: effect size the mixture targets")
    promote_on_win: bool = False

    @model_validator(mode="after")
    def _test_fits_metric(self) -> ABSettings:
        proportions = (SUCCESS_METRIC, OUTCOME_CORRECT)   # 0/1 per request (served without 5xx; label right)
        if self.test == "two_proportion" and self.metric not in proportions:
            raise ValueError(f"two_proportion needs a success-type metric ({' or '.join(map(repr, proportions))}), "
                             f"not {self.metric!r}")
        if self.test in ("mann_whitney", "welch") and self.metric == SUCCESS_METRIC:
            raise ValueError(f"{self.test} is for continuous metrics ({LATENCY_METRIC!r}, a model metric or an "
                             "outcome such as 'reward')")
        if self.metric in OUTCOMES and OUTCOMES[self.metric] != self.higher_is_better:
            raise ValueError(f"outcome {self.metric!r} is better when {'higher' if OUTCOMES[self.metric] else 'lower'}"
                             f"; set higher_is_better: {str(OUTCOMES[self.metric]).lower()}")
        return self


class ShadowSettings(_Strict):
    """A dark launch: the candidate gets a mirrored copy of live traffic and is judged on it, serving no caller."""

    passing_checks: int = Field(5, ge=1, description="passing analysis intervals of mirrored traffic to finish")
    then: Literal["conclude", "canary"] = Field(
        "conclude", description="conclude with a verdict (candidate would pass), or go on into the canary steps")


class BanditPrior(_Strict):
    """Beta(alpha, beta) prior of each arm's reward rate (``bernoulli``); the ``gaussian`` model ignores it."""

    alpha: float = Field(1.0, gt=0)
    beta: float = Field(1.0, gt=0)


class BanditSettings(_Strict):
    """Thompson sampling on a feedback reward: each interval (``interval_s``) the shares follow each version's
    posterior probability of being best, never below ``min_share``; it ends when one version's P(best)
    reaches ``promote_threshold`` with ``min_samples_per_arm`` rewards each (the candidate: promoted; the
    baseline: concluded, baseline kept), or after ``max_duration_s`` without a winner (concluded, baseline kept)."""

    reward: str = Field("reward", min_length=1, description="feedback outcome to maximise (higher is better)")
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        "bernoulli", description="bernoulli: 0/1 (or [0, 1]) rewards, Beta posterior; gaussian: continuous rewards")
    prior: BanditPrior = Field(default_factory=BanditPrior)
    min_share: float = Field(0.05, gt=0, le=0.5, description="floor share of traffic for every version")
    # Defaults from benchmarks/bandit_bench.py: 0.99 / 1000 never picked the worse of two close versions in 100
    # runs (0.95 / 100: 2-4 %); a run without a winner ends with the baseline kept. Lower them to decide faster.
    promote_threshold: float = Field(0.99, gt=0.5, lt=1.0, description="P(best) that ends the bandit")
    min_samples_per_arm: int = Field(1000, ge=1, description="rewards per version before a winner is declared")
    max_duration_s: float | None = Field(None, gt=0, description="no winner by then: concluded, baseline kept")


class QualityGate(_Strict):
    """Champion/challenger gate, judged by ``start`` before any traffic moves (:mod:`deployments.rollout.quality`).

    Compares candidate and baseline on one metric measured on the same dataset version (the training
    run's validation figures or an evaluation run's, registered in MLflow). A candidate worse than the
    baseline by more than ``max_regression`` is refused; so is one whose figures are missing, unless
    ``require`` is false. ``override_quality: true`` in the start request (``--allow-worse-quality``)
    starts it anyway, audited.
    """

    enabled: bool | None = Field(None, description="default: on for every mode but a shadow rollout that "
                                 "only concludes (it serves no caller)")
    metric: str | None = Field(None, description="val_accuracy, val_loss, …; default: the model's primary "
                               "metric (accuracy, else RMSE, else loss)")
    higher_is_better: bool | None = Field(None, description="default: from the metric's name")
    max_regression: float = Field(0.0, ge=0.0, description="how much worse than the baseline the candidate may be")
    require: bool = Field(True, description="refuse when the figures cannot be read (fail closed)")

    @model_validator(mode="after")
    def _direction_known(self) -> QualityGate:
        if self.metric is not None and self.higher_is_better is None and direction_of(self.metric) is None:
            raise ValueError(f"metric {self.metric!r}: set higher_is_better (not known from its name)")
        return self


class RolloutSpec(_Strict):
    name: str | None = None
    model: str = Field(min_length=1)
    baseline: str = "champion"
    candidate: str = Field(min_length=1)
    mode: Literal["canary", "ab", "shadow", "bandit"] = "canary"
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    interval_s: float = Field(5.0, ge=1.0)
    min_requests: int = Field(50, ge=1, description="candidate requests per step before it may advance")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    failed_checks_before_rollback: int = Field(2, ge=1)
    keep_old_warm_s: float = Field(600.0, ge=0)
    stale_after_s: float = Field(120.0, gt=0, description="a restarted controller holds at baseline past this age")
    router_lease_s: float | None = Field(None, gt=0, description="a router that has not heard from the controller "
                                         "this long sends everything to the baseline (default 3 intervals)")
    allow_new_required_fields: bool = Field(False, description="start even though the candidate requires input "
                                            "fields the baseline does not (recorded in the audit log)")
    ab: ABSettings | None = None
    bandit: BanditSettings | None = None
    shadow: ShadowSettings | None = None
    quality: QualityGate = Field(default_factory=QualityGate)

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_100(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("steps must not be empty")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step is a percentage in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("steps must strictly increase")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100 (full traffic before promotion)")
        return steps

    @model_validator(mode="after")
    def _mode_settings(self) -> RolloutSpec:
        if self.mode == "ab" and self.ab is None:
            self.ab = ABSettings()
        if self.mode == "shadow" and self.shadow is None:
            self.shadow = ShadowSettings()
        if self.mode != "ab" and self.ab is not None:
            raise ValueError("'ab' settings need mode: ab")
        if self.mode != "shadow" and self.shadow is not None:
            raise ValueError("'shadow' settings need mode: shadow")
        if self.mode == "bandit" and self.bandit is None:
            self.bandit = BanditSettings()
        if self.mode != "bandit" and self.bandit is not None:
            raise ValueError("'bandit' settings need mode: bandit")
        if ref_key(self.baseline) == ref_key(self.candidate):
            raise ValueError("baseline and candidate must differ")
        for ref in (self.baseline, self.candidate):
            name = _uri_model(ref)
            if name is not None and name != self.model:
                raise ValueError(f"reference {ref!r} names model {name!r}, not {self.model!r}")
        return self

    def candidate_percent(self, step_index: int) -> float:
        """Percent of live traffic on the candidate at a step (A/B: the fixed split; shadow: then its canary steps)."""
        if self.mode == "ab":
            assert self.ab is not None
            return self.ab.split
        return self.steps[step_index]

    @property
    def lease_s(self) -> float:
        """How long a router keeps a split without hearing from the controller."""
        return self.router_lease_s if self.router_lease_s is not None else 3 * self.interval_s

    @property
    def last_step(self) -> int:
        return 0 if self.mode in ("ab", "bandit") else len(self.steps) - 1


def ref_uri(model: str, ref: str) -> str:
    """``champion`` → ``models:/M@champion``; ``3``/``v3`` → ``models:/M/3``; URIs pass through."""
    if ref.startswith("models:/"):
        return ref
    kind, value = ref_key(ref)
    return f"models:/{model}/{value}" if kind == "version" else f"models:/{model}@{value}"


def ref_key(ref: str) -> tuple[str, str]:
    """(``"version"``|``"alias"``, value) of a reference, for comparisons."""
    body = ref.removeprefix("models:/")
    if "@" in body:
        return "alias", body.split("@", 1)[1]
    if "/" in body:
        return "version", body.rsplit("/", 1)[1]
    if body.lstrip("vV").isdigit():
        return "version", body.lstrip("vV")
    return "alias", body


def _uri_model(ref: str) -> str | None:
    if not ref.startswith("models:/"):
        return None
    body = ref.removeprefix("models:/")
    return body.split("@", 1)[0] if "@" in body else body.rsplit("/", 1)[0]


def parse_spec(data: dict[str, Any]) -> RolloutSpec:
    """Validate a spec mapping; every problem becomes one :class:`SpecError` line."""
    try:
        return RolloutSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise SpecError(f"invalid rollout spec: {problems}") from None


def load_spec(path: str | Path) -> RolloutSpec:
    return parse_spec(read_yaml_mapping(path, SpecError, "rollout spec"))
