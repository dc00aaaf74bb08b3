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
