"""Rollout spec validation: every mistake is one readable line, defaults are safe."""

from __future__ import annotations

import pytest

from deployments.rollout.errors import SpecError
from deployments.rollout.spec import load_spec, parse_spec, ref_uri
from tests.rollout.helpers import make_spec


def test_defaults_are_a_gated_canary_with_steps_5_25_50_100():
    spec = parse_spec({"model": "iris", "candidate": "3"})
    assert spec.mode == "canary" and spec.steps == [5, 25, 50, 100] and spec.baseline == "champion"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", [50, 25, 100], "strictly increase"),
    ("steps", [5, 25], "last step must be 100"),
    ("steps", [0, 100], r"\(0, 100\]"),
    ("interval_s", 0.5, "interval_s"),
    ("candidate", "champion", "must differ"),
    ("failed_checks_before_rollback", 0, "failed_checks_before_rollback"),
    ("surprise", 1, "surprise"),
])
def test_invalid_specs_are_rejected_with_the_field_named(field, value, message):
    with pytest.raises(SpecError, match=message) as err:
        make_spec(**{field: value})
    assert err.value.status_code == 400


def test_fractional_intervals_down_to_one_second_are_allowed():
    assert make_spec(interval_s=1.0).interval_s == 1.0
    assert make_spec(interval_s=1.5).interval_s == 1.5


def test_ab_test_must_fit_the_metric():
    with pytest.raises(SpecError, match="continuous"):
        make_spec(mode="ab", ab={"metric": "success", "test": "welch"})
    with pytest.raises(SpecError, match="success-type"):
        make_spec(mode="ab", ab={"metric": "latency_ms", "test": "two_proportion"})
    assert make_spec(mode="ab", ab={"metric": "latency_ms", "test": "mann_whitney"}).ab.test == "mann_whitney"


def test_shadow_mode_defaults_to_concluding_and_its_settings_need_the_mode():
    spec = make_spec(mode="shadow")
    assert spec.shadow.then == "conclude" and spec.shadow.passing_checks >= 1
    with pytest.raises(SpecError, match="need mode: shadow"):
        make_spec(shadow={"then": "canary"})
    with pytest.raises(SpecError, match=r"shadow\.then"):
        make_spec(mode="shadow", shadow={"then": "promote"})


def test_references_resolve_to_registry_uris():
    assert ref_uri("iris", "champion") == "models:/iris@champion"
    assert ref_uri("iris", "@challenger") == "models:/iris@challenger"
    assert ref_uri("iris", "v3") == "models:/iris/3"
    assert ref_uri("iris", "models:/iris/2") == "models:/iris/2"


def test_a_uri_for_another_model_is_rejected():
    with pytest.raises(SpecError, match="names model 'other'"):
        make_spec(candidate="models:/other/2")


def test_load_spec_reads_yaml_and_reports_bad_files(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("model: iris\ncandidate: '2'\nsteps: [25, 100]\ninterval_s: 1\n")
    assert load_spec(good).steps == [25, 100]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"missing\.yaml does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_example_specs_validate():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[2] / "examples" / "rollouts").glob("*.yaml"))
    assert examples
    for path in examples:
        load_spec(path)
