"""Request bodies are rejected with the right status and the field named, before any model runs."""

from __future__ import annotations

import json

import pytest

from deployments.payload import PayloadError, check_size, parse_instances


def parse(body: bytes, max_bytes: int = 10_000, max_instances: int = 10):
    return parse_instances(body, max_bytes, max_instances)


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, "body"),
    (b"\xff\xfe", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b'{"inputs": []}', 422, "instances"),
    (b'{"instances": {}}', 422, "instances"),
    (b'{"instances": []}', 422, "instances"),
    (b'{"instances": [{"a": 1}, 3]}', 422, "instances[1]"),
    (json.dumps({"instances": [{}] * 11}).encode(), 422, "instances"),
    (b"[" * 100_000, 400, "body"),
])
def test_malformed_bodies_get_a_4xx_naming_the_field(body, status, field):
    with pytest.raises(PayloadError) as err:
        parse(body, max_bytes=1_000_000)
    assert (err.value.status, err.value.field) == (status, field)


def test_an_oversized_body_is_413_by_declared_or_actual_length():
    with pytest.raises(PayloadError) as declared:
        check_size("20000", 10_000)
    with pytest.raises(PayloadError) as actual:
        parse(b" " * 10_001)
    assert declared.value.status == actual.value.status == 413


def test_an_integer_too_big_for_a_float_becomes_infinity_not_an_overflow():
    [record] = parse(b'{"instances": [{"x1": ' + b"9" * 400 + b"}]}")
    assert record["x1"] == float("inf")


# ---- the contract's rules on request fields (models.preprocessing, as the model server applies them) -------

@pytest.mark.parametrize(("overrides", "field", "rule"), [
    ({"x1": 150.0}, "x1", "range"),                 # the contract says [-100, 100]
    ({"x3": 1e308}, "x3", "range"),                 # finite as a double, inf as the model's float32
    ({"x3": 3.5}, "x3", "type"),                    # the contract's type is int
    ({"x1": float("inf")}, "x1", "finite"),
    ({"color": "purple"}, "color", "allowed"),
    ({"x1": None}, "x1", "required"),
])
def test_a_value_outside_the_contract_is_an_input_error_naming_field_and_rule(overrides, field, rule):
    from models.preprocessing import InputError
    from tests.serve.helpers import PREPROCESSING, instance

    with pytest.raises(InputError) as err:
        PREPROCESSING.records_to_matrix([instance(0, **overrides)])
    assert (err.value.field, err.value.rule) == (field, rule)


def test_an_outlier_is_clipped_as_in_training_even_an_extreme_one():
    from tests.serve.helpers import PREPROCESSING, instance

    matrix = PREPROCESSING.records_to_matrix([instance(0, x2=1e308), instance(1, x2=-7.0)])
    assert matrix[:, 1].tolist() == [3.0, -3.0]  # x2 clipped to [-3, 3] (normalised with mean 0, std 1)


def test_a_value_that_only_overflows_once_scaled_is_a_range_error():
    from models.preprocessing import InputError, Preprocessing

    pre = Preprocessing.from_manifest({"target": "y", "task": "regression", "features": [{"name": "v"}],
                                       "normalization": {"v": {"mean": 0.0, "std": 1e-6}}})
    with pytest.raises(InputError) as err:
        pre.records_to_matrix([{"v": 1e36}])
    assert (err.value.field, err.value.rule) == ("v", "range")


def test_contract_rules_survive_the_trip_through_preprocessing_json():
    from models.preprocessing import Preprocessing
    from tests.serve.helpers import PREPROCESSING

    again = Preprocessing.from_dict(json.loads(json.dumps(PREPROCESSING.to_dict())))
    assert again == PREPROCESSING
    assert again.features[0].maximum == 100 and again.features[1].clip == (-3.0, 3.0) and again.features[2].integer
