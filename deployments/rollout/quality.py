"""The champion/challenger quality gate: is the candidate at least as good as the baseline on the same data?

Pure logic, no I/O: :mod:`deployments.rollout.figures` reads what MLflow holds (a version's
training-run validation figures, tagged on the version with its dataset version, and the
evaluation runs of ``jobs.evaluate``) into :class:`Figures`; :func:`compare` judges them. Figures
count only when both versions were measured on the *same* dataset version: a candidate that looks
better on other data proves nothing, so the gate then fails closed (``quality.require``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployments.rollout.spec import QualityGate, RolloutSpec

HIGHER_IS_BETTER = frozenset({"accuracy", "auc", "f1", "precision", "recall", "r2"})
LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae", "mse", "error", "perplexity"})
PRIMARY = ("accuracy", "rmse", "loss")   # the model's primary metric when the spec names none
TOLERANCE = 1e-9                         # float noise is not a regression


def metric_key(name: str) -> str:
    """``val_accuracy`` (training), ``eval_accuracy`` (evaluation job) and ``accuracy`` name one measure."""
    key = name.removeprefix("final_")
    for prefix in ("val_", "eval_"):
        key = key.removeprefix(prefix)
    return key


def direction_of(metric: str) -> bool | None:
    """True when higher is better, False when lower is, None when the name does not say."""
    key = metric_key(metric)
    if key in HIGHER_IS_BETTER:
        return True
    if key in LOWER_IS_BETTER:
        return False
    return None


def gate_applies(spec: RolloutSpec) -> bool:
    """On unless switched off, and off by default only for a shadow rollout that serves no caller."""
    if spec.quality.enabled is not None:
        return spec.quality.enabled
    return not (spec.mode == "shadow" and spec.shadow is not None and spec.shadow.then == "conclude")


@dataclass(frozen=True)
class Figures:
    """One model version's metrics on one dataset version's validation split, and where they come from."""

    dataset: str
    dataset_version: str
    metrics: dict[str, float]        # by :func:`metric_key`
    source: str                      # "training run" or "evaluation run <id>"
    at: float = 0.0                  # when measured (evaluation runs); training figures count as oldest

    @property
    def data(self) -> str:
        return f"{self.dataset} version {self.dataset_version}"


@dataclass(frozen=True)
class QualityResult:
    """The gate's verdict: ``passed``, one line with both figures (or why there are none), and event details."""

    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Both versions had figures on one dataset version (False: missing or unreadable)."""
        return "baseline" in self.details


def compare(gate: QualityGate, baseline_version: str, candidate_version: str,
            baseline: list[Figures], candidate: list[Figures]) -> QualityResult:
    """Judge the candidate against the baseline on the newest dataset version both were measured on."""
    key = metric_key(gate.metric) if gate.metric else _primary(baseline, candidate)
    pair = _common(key, baseline, candidate) if key else None
    if pair is None:
        return _missing(gate, key, baseline_version, candidate_version, baseline, candidate)
    base, cand = pair
    higher = gate.higher_is_better if gate.higher_is_better is not None else direction_of(key)
    assert higher is not None, "validated in the spec"
    name = gate.metric or f"val_{key}"
    b, c = base.metrics[key], cand.metrics[key]
    worse_by = (b - c) if higher else (c - b)
    passed = worse_by <= gate.max_regression + TOLERANCE
    sources = base.source if base.source == cand.source else f"{base.source} / {cand.source}"
    figures = (f"candidate v{candidate_version} {name} {c:.6g} vs baseline v{baseline_version} {b:.6g} on "
               f"{cand.data} ({sources}, {'higher' if higher else 'lower'} is better)")
    if passed:
        reason = f"quality gate passed: {figures}"
    else:
        reason = (f"quality gate: {figures}: {worse_by:.6g} worse, more than the allowed {gate.max_regression:g} "
                  f"(quality.max_regression)")
    return QualityResult(passed, reason, {
        "metric": name, "baseline": b, "candidate": c, "higher_is_better": higher, "worse_by": worse_by,
        "max_regression": gate.max_regression, "dataset": cand.dataset, "dataset_version": cand.dataset_version,
        "source": sources, "passed": passed})


def unreadable(gate: QualityGate, baseline_version: str, candidate_version: str, why: str) -> QualityResult:
    """MLflow could not be asked: fail closed unless figures are not required."""
    reason = (f"quality gate: figures of baseline v{baseline_version} and candidate v{candidate_version} could "
              f"not be read ({why})")
    return QualityResult(not gate.require, reason, {"passed": False, "error": why, "required": gate.require})


def _primary(baseline: list[Figures], candidate: list[Figures]) -> str | None:
    """The first primary metric measured for both versions on one dataset version."""
    return next((key for key in PRIMARY if _common(key, baseline, candidate)), None)


def _common(key: str, baseline: list[Figures], candidate: list[Figures]) -> tuple[Figures, Figures] | None:
    """Baseline and candidate figures of ``key`` on the same dataset version, the most recently measured."""
    pairs = [(b, c) for b in baseline for c in candidate
             if (b.dataset, b.dataset_version) == (c.dataset, c.dataset_version)
             and key in b.metrics and key in c.metrics]
    return max(pairs, key=lambda p: max(p[0].at, p[1].at)) if pairs else None


def _missing(gate: QualityGate, key: str | None, baseline_version: str, candidate_version: str,
             baseline: list[Figures], candidate: list[Figures]) -> QualityResult:
    what = gate.metric or (f"val_{key}" if key else "primary-metric (" + ", ".join(PRIMARY) + ")")
    seen = "; ".join(f"v{v}: " + (", ".join(sorted({f.data for f in figs})) or "no figures")
                     for v, figs in ((baseline_version, baseline), (candidate_version, candidate)))
    reason = (f"quality gate: no {what} figures for both baseline v{baseline_version} and candidate "
              f"v{candidate_version} on one dataset version ({seen}); evaluate both on the same data (`rayline "
              f"canary start` does, or `python -m jobs.evaluate --model models:/NAME/VERSION --dataset latest` "
              f"for each)")
    if not gate.require:
        reason += "; started without it (quality.require: false)"
    return QualityResult(not gate.require, reason, {"metric": what, "passed": False, "required": gate.require})
