"""Any MLflow ``python_function`` model served and rolled out: scikit-learn, a custom pyfunc with ``code_paths``.

One registered name holds v1, a scikit-learn pipeline, and v2, a custom ``PythonModel`` whose class
lives in a module written to ``tmp_path`` and logged as ``code_paths`` (the replica can import it
only because MLflow puts it on ``sys.path`` at load); v3 is the same kind of pyfunc raising on half
its calls. Everything is real: Ray, Serve over HTTP, the session's MLflow server, the rollout
controller. Nothing is mocked.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from cluster.registry import Registry
from deployments.contracts import BASELINE, CANDIDATE, HEADER_VARIANT
from tests.serve.helpers import (
    TERMINAL,
    admin_ok,
    champion_version,
    instance,
    phase,
    quality_tags,
    running_app,
    spec,
    wait_for,
)
from tests.serve.test_rollout import Load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LIB = f"scorer_{uuid.uuid4().hex[:6]}"   # the code_paths module: importable in a replica only through MLflow
LIB_SOURCE = '''
import random

import mlflow.pyfunc


def score(frame):
    """What v2 predicts: a plain function of the request fields."""
    return (frame["x1"] * 2.0 + frame["x3"] + (frame["color"] == "red")).round(6).tolist()


class Scorer(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return score(model_input)


class Flaky(Scorer):
    """Fails half its calls, as a broken release would."""

    def predict(self, context, model_input, params=None):
        if random.random() < 0.5:
            raise RuntimeError("flaky model failed")
        return score(model_input)
'''


def training_frame() -> Any:
    import pandas as pd

    return pd.DataFrame.from_records([instance(i) for i in range(30)])


def sklearn_pipeline() -> Any:
    """A scikit-learn pipeline over the test fields (numbers passed through, colour one-hot encoded)."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = training_frame()
    labels = ["yes" if x1 + (color == "red") > 3 else "no" for x1, color in zip(frame.x1, frame.color, strict=True)]
    return make_pipeline(make_column_transformer(("passthrough", ["x1", "x2", "x3"]),
                                                 (OneHotEncoder(handle_unknown="ignore"), ["color"])),
                         LogisticRegression()).fit(frame, labels)


def log_version(settings, name: str, log: Any) -> str:
    """Run ``log(signature)`` in a new MLflow run registering the next version of ``name``; that version."""
    import mlflow
    from mlflow.models import infer_signature

    registry = Registry(settings)
    frame = training_frame()
    with mlflow.start_run(experiment_id=registry.ensure_experiment()):
        log(infer_signature(frame, ["yes"] * len(frame)))
    version = registry.versions(name)[-1].version
    for key, value in quality_tags().items():   # measured on one held-out set, as the quality gate needs
        registry.set_version_tag(name, version, key, value)
    return version


def log_pyfunc(settings, name: str, model: Any, code: Path, requirements: list[str] | None = None) -> str:
    import mlflow.pyfunc

    return log_version(settings, name, lambda signature: mlflow.pyfunc.log_model(
        name="model", python_model=model, code_paths=[str(code)], signature=signature,
        pip_requirements=requirements or ["pandas"], registered_model_name=name))


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The code_paths module, imported here only to log it (then forgotten: replicas must get it from MLflow)."""
    path = tmp_path_factory.mktemp("code") / f"{LIB}.py"
    path.write_text(textwrap.dedent(LIB_SOURCE))
    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.import_module(LIB)
    finally:
        sys.path.remove(str(path.parent))
    module.path = path
    return module


@pytest.fixture(scope="module")
def model(settings, lib) -> dict[str, Any]:
    """v1 scikit-learn @champion, v2 custom pyfunc with code_paths @challenger, v3 flaky pyfunc (no alias)."""
    import mlflow.sklearn

    name = f"any-{uuid.uuid4().hex[:6]}"
    pipeline = sklearn_pipeline()
    v1 = log_version(settings, name, lambda signature: mlflow.sklearn.log_model(
        pipeline, name="model", signature=signature, registered_model_name=name,
        pip_requirements=["scikit-learn==1.9.1"]))
    v2 = log_pyfunc(settings, name, lib.Scorer(), lib.path)
    v3 = log_pyfunc(settings, name, lib.Flaky(), lib.path)
    registry = Registry(settings)
    registry.set_alias(name, "champion", v1)
    registry.set_alias(name, "challenger", v2)
    return {"name": name, "pipeline": pipeline, "versions": (v1, v2, v3)}


@pytest.fixture(scope="module")
def app(serve_url, settings, model):
    with running_app(serve_url, settings, model["name"]) as app:
        yield app


def test_a_sklearn_model_is_served_over_http_and_predicts_what_sklearn_predicts_in_process(app, model, settings):
    import pandas as pd

    instances = [instance(i) for i in range(8)]
    response = app.predict(instances)
    assert response.status_code == 200, response.text
    assert response.headers[HEADER_VARIANT] == BASELINE
    expected = model["pipeline"].predict(pd.DataFrame.from_records(instances)).tolist()
    assert response.json()["predictions"] == expected and set(expected) == {"yes", "no"}
    described = app.client.get(f"{app.url}/v1/models/{app.model}").json()
    assert [(f["name"], f["kind"]) for f in described["fields"]] == [
        ("x1", "numeric"), ("x2", "numeric"), ("x3", "numeric"), ("color", "string")]
    instance_schema = app.client.get(f"{app.url}/openapi.json").json()["components"]["schemas"]["Instance"]
    assert instance_schema["properties"]["color"] == {"type": "string"}
    # what the controller compares before a rollout: both flavors' signatures read the same
    registry = Registry(settings)
    v1, v2, _ = model["versions"]
    assert registry.input_schema(app.model, v1) == registry.input_schema(app.model, v2) == {
        "x1": "double", "x2": "double", "x3": "double", "color": "string"}


@pytest.mark.parametrize(("bad", "field", "rule"), [
    ({"color": None}, "color", "required"),
    ({"x1": "abc"}, "x1", "type"),
    ({"color": 3}, "color", "type"),
])
def test_a_request_that_breaks_the_signature_is_a_422_naming_the_field_and_its_neighbours_are_served(
        app, bad, field, rule):
    broken = {k: v for k, v in instance(1, **bad).items() if v is not None}
    response = app.predict([instance(0), broken])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["field"], error["rule"]) == (field, rule), error
    assert app.predict([instance(0)]).status_code == 200


def test_sklearn_v1_to_a_code_paths_pyfunc_v2_is_canaried_and_promoted(app, model, lib):
    import pandas as pd

    with Load(app):
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci"})
        wait_for(lambda: phase(app) in TERMINAL)
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "succeeded", rollout["reason"]
    assert champion_version(app) == model["versions"][1]
    instances = [instance(i) for i in range(4)]
    response = app.predict(instances)
    assert response.status_code == 200 and response.headers[HEADER_VARIANT] == CANDIDATE
    assert response.json()["predictions"] == lib.score(pd.DataFrame.from_records(instances))


def test_a_pyfunc_failing_half_its_calls_is_rolled_back_and_champion_stays(serve_url, settings, model):
    """Both pyfunc versions loaded inside the router's replicas (``colocate: true``): that topology covered too."""
    registry = Registry(settings)
    _, v2, v3 = model["versions"]
    registry.set_alias(model["name"], "champion", v2)
    registry.set_alias(model["name"], "challenger", v3)
    with running_app(serve_url, settings, model["name"], colocate=True) as app, Load(app) as load:
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": spec(app), "actor": "ci"})
        wait_for(lambda: phase(app) in TERMINAL)
        rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "rolled_back" and "error rate" in rollout["decision"]["reason"], rollout
    assert any(v == CANDIDATE and code == 500 for _, v, code in load.served), "the candidate really failed"
    assert champion_version(app) == v2


def test_a_model_whose_requirement_is_not_installed_fails_to_start_naming_it(serve_url, settings, model, lib):
    from ray import serve

    from cluster.serving import startup_failure
    from deployments.app import model_args
    from deployments.model_server import ModelServer
    from deployments.serve_config import parse_config

    name = model["name"]
    version = log_pyfunc(settings, name, lib.Scorer(), lib.path, requirements=["pandas", "not-a-real-pkg==1.0"])
    cfg = parse_config({"model_name": name, "baseline": f"models:/{name}/{version}",
                        "tracking_uri": str(settings.mlflow_tracking_uri), "num_cpus": 0.1})
    app_name = f"req-{uuid.uuid4().hex[:6]}"
    args = model_args(cfg, "baseline", f"models:/{name}/{version}", version, str(settings.mlflow_tracking_uri))
    with pytest.raises(RuntimeError) as failed:   # one start, not Serve's three: the test waits less
        serve.run(ModelServer.options(name="model-baseline", max_constructor_retry_count=1,
                                      ray_actor_options={"num_cpus": 0.1}).bind(**args),
                  name=app_name, route_prefix=None)
    reason = startup_failure(app_name, str(failed.value))
    serve.delete(app_name)
    assert "not-a-real-pkg==1.0" in reason and "not installed" in reason and "\n" not in reason, reason
