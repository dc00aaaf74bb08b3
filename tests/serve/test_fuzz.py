"""Fuzzed predict bodies (hypothesis) against the real router: never a 5xx, always a JSON answer.

Generated bodies range from arbitrary bytes and arbitrary JSON to near-valid instances with
one field mutated (wrong type, non-finite, huge, missing, unknown category, nested junk).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.helpers import instance

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
