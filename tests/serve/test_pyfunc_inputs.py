"""How a ``python_function`` model's requests, outputs and requirements are judged (``models.pyfunc_model``).

Pure functions, no Ray or MLflow server: the signatures are real MLflow ``Schema`` objects and the
requirements are checked against this environment's installed packages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.types import ColSpec, Schema

from models.preprocessing import InputError
from models.pyfunc_model import PyfuncModel, check_requirements, json_rows, missing_requirements

SCHEMA = Schema([ColSpec("double", "x"), ColSpec("long", "n"), ColSpec("string", "color"),
                 ColSpec("boolean", "flag", required=False)])


def model() -> PyfuncModel:
    return PyfuncModel(model=None, uri="models:/m/1", flavor="mlflow.sklearn", schema=SCHEMA)


def test_a_valid_request_becomes_a_frame_with_the_signature_types():
    frame = model().frame([{"x": 1, "n": 2, "color": "red"}, {"x": 0.5, "n": 3.0, "color": "blue", "flag": True}])
    assert list(frame["x"]) == [1.0, 0.5] and frame["x"].dtype == np.float64
    assert list(frame["n"]) == [2, 3] and list(frame["color"]) == ["red", "blue"]


@pytest.mark.parametrize(("instance", "field", "rule"), [
    ({"n": 2, "color": "red"}, "x", "required"),
    ({"x": None, "n": 2, "color": "red"}, "x", "required"),
    ({"x": "1", "n": 2, "color": "red"}, "x", "type"),
    ({"x": True, "n": 2, "color": "red"}, "x", "type"),
    ({"x": [1.0], "n": 2, "color": "red"}, "x", "type"),
    ({"x": float("inf"), "n": 2, "color": "red"}, "x", "finite"),
    ({"x": 1.0, "n": 2.5, "color": "red"}, "n", "type"),
    ({"x": 1.0, "n": 2, "color": 5}, "color", "type"),
    ({"x": 1.0, "n": 2, "color": "red", "flag": "yes"}, "flag", "type"),
])
def test_a_value_that_breaks_its_column_is_an_input_error_naming_the_field_and_rule(instance, field, rule):
    with pytest.raises(InputError) as err:
        model().frame([{"x": 0.0, "n": 0, "color": "ok"}, instance])
    assert (err.value.field, err.value.rule) == (field, rule)


def test_an_instance_that_is_not_an_object_is_an_input_error():
    with pytest.raises(InputError) as err:
        model().frame([["x", 1.0]])
    assert err.value.field == "instances"


@pytest.mark.parametrize(("output", "rows"), [
    (np.array([1, 2]), [1, 2]),
    (np.array([[0.1, 0.9], [0.8, 0.2]]), [[0.1, 0.9], [0.8, 0.2]]),
    (pd.Series(["a", "b"]), ["a", "b"]),
    (pd.DataFrame({"label": ["a", "b"], "p": [0.5, 0.25]}), [{"label": "a", "p": 0.5}, {"label": "b", "p": 0.25}]),
    ([np.int64(3), "x"], [3, "x"]),
])
def test_outputs_become_one_plain_json_value_per_instance(output, rows):
    assert json_rows(output) == rows


def test_a_non_finite_output_is_refused():
    with pytest.raises(ValueError, match="not finite"):
        json_rows(np.array([1.0, np.nan]))


def test_requirements_not_installed_are_named_and_other_versions_only_reported():
    import sklearn

    missing, other = missing_requirements("\n".join([
        "# comment", "-r constraints.txt", f"scikit-learn=={sklearn.__version__}", "scikit-learn==0.1",
        "not-a-real-pkg==1.0", "another_missing_pkg>=2", 'windows-only-pkg==1; sys_platform == "win32"']))
    assert missing == ["not-a-real-pkg==1.0", "another_missing_pkg>=2"]
    assert other == [f"scikit-learn==0.1 (installed {sklearn.__version__})"]


def test_a_model_needing_a_missing_package_fails_with_one_line_naming_it(tmp_path):
    from models.pyfunc_model import MissingRequirements

    (tmp_path / "requirements.txt").write_text("mlflow\nnot-a-real-pkg==1.0\n")
    with pytest.raises(MissingRequirements) as err:
        check_requirements(tmp_path, "models:/m/3")
    assert "not-a-real-pkg==1.0" in str(err.value) and "models:/m/3" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_schema_error_names_the_column_mlflow_names_and_no_other():
    assert model()._culprit("Incompatible input types for column color. Can not safely convert") == "color"
    assert model()._culprit("Model is missing inputs ['n'].") == "n"
    assert model()._culprit("All arrays must be of the same length") == "instances"
