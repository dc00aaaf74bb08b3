"""Fuzzed predict bodies (hypothesis) against the real router: never a 5xx, always a JSON answer.

Generated bodies range from arbitrary bytes and arbitrary JSON to near-valid instances with
one field mutated (wrong type, non-finite, huge, missing, unknown category, nested junk), and
bodies drawn from the app's own ``/openapi.json`` (inside the published schema: 200; just
outside a field's bounds: a 422 naming the field and the rule).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.helpers import COLORS, PREPROCESSING, instance, register_version, tiny_model

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**400), max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def mutated_instances(draw) -> list:
    records = [instance(i) for i in range(draw(st.integers(1, 3)))]
    record = records[draw(st.integers(0, len(records) - 1))]
    field = draw(st.sampled_from(["x1", "x2", "x3", "color", "extra"]))
    if draw(st.booleans()):
        record.pop(field, None)
    else:
        record[field] = draw(json_values)
    return records


def check(response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")
    if response.status_code != 200:
        assert response.json()["error"]["status"] == response.status_code


@SETTINGS
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_produce_a_5xx(static_app, body):
    check(static_app.client.post(static_app.predict_url, content=body))


@SETTINGS
@given(body=json_values)
def test_arbitrary_json_never_produces_a_5xx(static_app, body):
    check(static_app.client.post(static_app.predict_url, content=json.dumps(body).encode()))


@SETTINGS
@given(instances=mutated_instances())
def test_near_valid_instances_are_200_or_a_422_naming_the_field(static_app, instances):
    response = static_app.client.post(static_app.predict_url, content=json.dumps({"instances": instances}).encode())
    check(response)
    assert response.status_code in (200, 422)
    if response.status_code == 422:
        assert response.json()["error"]["field"] in ("x1", "x2", "x3", "color", "body")


# ---- the contract's ranges over HTTP -------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "rule"), [
    ("x1", 150.0, "range"), ("x3", 1e308, "range"), ("x1", -1e308, "range"), ("x3", 2.5, "type")])
def test_out_of_contract_values_are_a_422_naming_field_and_rule(static_app, field, value, rule):
    response = static_app.predict([instance(0), instance(1, **{field: value})])
    check(response)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["field"], error["rule"]) == (field, rule), error


def test_an_outlier_the_contract_clips_is_served_clipped(static_app):
    clipped = static_app.predict([instance(4, x2=1e308)])
    assert clipped.status_code == 200, clipped.text
    assert clipped.json()["predictions"] == static_app.predict([instance(4, x2=3.0)]).json()["predictions"]


@pytest.mark.timeout(120)
def test_a_non_finite_model_output_is_a_json_500_with_its_reason(serve_url, settings):
    """A registered version whose weights are NaN, served as its own model-server app (the direct path)."""
    import httpx
    from ray import serve

    from deployments.model_server import ModelServer

    broken = tiny_model(5)
    with torch.no_grad():
        next(broken.parameters()).fill_(math.nan)
    version = register_version(settings, "nan-model", broken)
    server = ModelServer.options(ray_actor_options={"num_cpus": 0.05}).bind(
        model_uri=f"models:/nan-model/{version}", variant="baseline", version=version,
        tracking_uri=str(settings.mlflow_tracking_uri))
    serve.run(server, name="nan-model", route_prefix="/nan-model")
    try:
        response = httpx.post(f"{serve_url}/nan-model", json={"instances": [instance(0), instance(1)]}, timeout=30)
    finally:
        serve.delete("nan-model")
    assert response.status_code == 500 and response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["rule"] == "finite_output" and "not finite (nan/inf) for 2 of 2" in error["message"]


# ---- the published schema, and a fuzz driven by it ----------------------------------------------------------

def openapi(app) -> dict[str, Any]:
    response = app.client.get(f"{app.url}/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def test_openapi_declares_the_predict_request_and_response_bodies(static_app):
    doc = openapi(static_app)
    operation = doc["paths"]["/v1/models/{name}:predict"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictResponse")
    assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    instance_schema = doc["components"]["schemas"]["Instance"]
    assert instance_schema["required"] == [f.name for f in PREPROCESSING.features]
    props = instance_schema["properties"]
    assert props["x1"] == {"type": "number", "minimum": -100, "maximum": 100}
    assert props["x3"] == {"type": "integer", "minimum": 0, "maximum": 50}
    assert props["color"] == {"type": "string", "enum": list(COLORS)}
    assert "clipped" in props["x2"]["description"]
    prediction = doc["components"]["schemas"]["PredictResponse"]["properties"]["predictions"]["items"]
    assert prediction == {"type": "string", "enum": ["no", "yes"]}
    assert doc["servers"] == [{"url": f"/{static_app.name}"}]


def strategy(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy:
    """Values valid under ``schema`` (the subset of JSON Schema the serving document uses)."""
    if "$ref" in schema:
        return strategy(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "object":
        return st.fixed_dictionaries({k: strategy(v, components) for k, v in schema["properties"].items()})
    if kind == "array":
        return st.lists(strategy(schema["items"], components), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "integer":
        return st.integers(math.ceil(schema["minimum"]), math.floor(schema["maximum"]))
    return st.floats(schema["minimum"], schema["maximum"], allow_nan=False)


@st.composite
def just_outside(draw, schema: dict[str, Any]) -> tuple[str, Any]:
    """A bounded numeric field and a value beyond its bounds (by a little or by 1e308)."""
    bounded = {k: v for k, v in schema["properties"].items() if "maximum" in v and abs(v["maximum"]) < 1e30}
    name = draw(st.sampled_from(sorted(bounded)))
    lo, hi = bounded[name]["minimum"], bounded[name]["maximum"]
    return name, draw(st.sampled_from([hi + 1, lo - 1, 1e308, -1e308]))


SCHEMA_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                           derandomize=True)


@pytest.mark.timeout(180)
def test_bodies_drawn_from_the_published_schema_are_served_and_just_outside_it_are_a_422(static_app):
    doc = openapi(static_app)
    components = doc["components"]["schemas"]
    request = doc["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]
    classes = components["PredictResponse"]["properties"]["predictions"]["items"]["enum"]

    @SCHEMA_SETTINGS
    @given(body=strategy(request["schema"], components))
    def inside(body):
        response = static_app.client.post(static_app.predict_url, json=body)
        check(response)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer["predictions"]) == len(body["instances"]) and set(answer["predictions"]) <= set(classes)

    @SCHEMA_SETTINGS
    @given(body=strategy(request["schema"], components), outside=just_outside(components["Instance"]))
    def beyond(body, outside):
        name, value = outside
        body["instances"][-1][name] = value
        response = static_app.client.post(static_app.predict_url, json=body)
        check(response)
        assert response.status_code == 422, response.text
        assert (response.json()["error"]["field"], response.json()["error"]["rule"]) == (name, "range")

    inside()
    beyond()
