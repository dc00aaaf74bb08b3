"""The quality gate's judgement, without Ray or MLflow: which figures are compared, margins, directions, messages."""

from __future__ import annotations

import pytest

from deployments.rollout.errors import SpecError
from deployments.rollout.figures import from_version_tags
from deployments.rollout.quality import Figures, compare, gate_applies
from deployments.rollout.spec import QualityGate, parse_spec


def fig(accuracy: float | None = None, version: str = "d1", loss: float | None = None, at: float = 0.0,
        source: str = "training run") -> Figures:
    metrics = {k: v for k, v in (("accuracy", accuracy), ("loss", loss)) if v is not None}
    return Figures("customers", version, metrics, source, at)


def test_a_worse_candidate_is_refused_with_both_figures_and_the_dataset_version():
    result = compare(QualityGate(), "1", "2", [fig(0.878)], [fig(0.858)])
    assert not result.passed
    assert "candidate v2 val_accuracy 0.858 vs baseline v1 0.878" in result.reason
    assert "customers version d1" in result.reason and "0.02 worse" in result.reason
    assert result.details["baseline"] == 0.878 and result.details["candidate"] == 0.858


def test_a_better_or_equal_candidate_passes():
    assert compare(QualityGate(), "1", "2", [fig(0.878)], [fig(0.891)]).passed
    assert compare(QualityGate(), "1", "2", [fig(0.878)], [fig(0.878)]).passed


def test_a_regression_within_the_margin_passes_and_one_beyond_it_does_not():
    gate = QualityGate(max_regression=0.01)
    assert compare(gate, "1", "2", [fig(0.878)], [fig(0.870)]).passed
    assert not compare(gate, "1", "2", [fig(0.878)], [fig(0.867)]).passed


def test_a_lower_is_better_metric_refuses_a_higher_loss():
    gate = QualityGate(metric="val_loss")
    assert not compare(gate, "1", "2", [fig(loss=0.30)], [fig(loss=0.35)]).passed
    assert compare(gate, "1", "2", [fig(loss=0.30)], [fig(loss=0.25)]).passed


def test_figures_on_different_dataset_versions_are_not_compared_and_fail_closed_with_what_was_seen():
    result = compare(QualityGate(), "1", "2", [fig(0.95, "d1")], [fig(0.80, "d2")])
    assert not result.passed and not result.measured
    assert "v1: customers version d1" in result.reason and "v2: customers version d2" in result.reason
    assert "jobs.evaluate" in result.reason


def test_missing_figures_pass_only_when_the_spec_does_not_require_them():
    result = compare(QualityGate(require=False), "1", "2", [], [fig(0.9)])
    assert result.passed and "quality.require: false" in result.reason and "v1: no figures" in result.reason


def test_the_most_recent_common_evaluation_is_the_one_compared():
    baseline = [fig(0.80, "d1"), fig(0.90, "d2", at=5.0, source="evaluation run aaaa")]
    candidate = [fig(0.85, "d1"), fig(0.88, "d2", at=6.0, source="evaluation run bbbb")]
    result = compare(QualityGate(), "1", "2", baseline, candidate)
    assert not result.passed and result.details["dataset_version"] == "d2"
    assert "evaluation run aaaa / evaluation run bbbb" in result.reason


def test_the_primary_metric_is_accuracy_then_rmse_then_loss():
    assert compare(QualityGate(), "1", "2", [fig(loss=0.3)], [fig(loss=0.4)]).details["metric"] == "val_loss"
    assert compare(QualityGate(), "1", "2", [fig(0.9, loss=0.3)], [fig(0.9, loss=0.4)]).passed


def test_version_tags_written_at_registration_become_figures():
    tags = {"dataset": "customers", "dataset_version": "v-3de5", "val_accuracy": "0.8783", "val_loss": "0.305",
            "run_id": "abc", "git_commit": "x"}
    figures = from_version_tags(tags)
    assert figures is not None and figures.metrics == {"accuracy": 0.8783, "loss": 0.305}
    assert from_version_tags({"val_accuracy": "0.9"}) is None   # no lineage: not comparable with anything


def test_the_gate_is_on_by_default_except_for_a_shadow_rollout_that_only_concludes():
    assert gate_applies(parse_spec({"model": "m", "candidate": "2"}))
    assert gate_applies(parse_spec({"model": "m", "candidate": "2", "mode": "ab"}))
    assert not gate_applies(parse_spec({"model": "m", "candidate": "2", "mode": "shadow"}))
    assert gate_applies(parse_spec({"model": "m", "candidate": "2", "mode": "shadow", "shadow": {"then": "canary"}}))
    assert not gate_applies(parse_spec({"model": "m", "candidate": "2", "quality": {"enabled": False}}))


def test_a_metric_whose_direction_is_unknown_needs_higher_is_better():
    with pytest.raises(SpecError, match=r"quality.*higher_is_better"):
        parse_spec({"model": "m", "candidate": "2", "quality": {"metric": "conversion"}})
    parse_spec({"model": "m", "candidate": "2", "quality": {"metric": "conversion", "higher_is_better": True}})
