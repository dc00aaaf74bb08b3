"""Overload and slowness on a real app whose model takes 1 s per call: 503 + Retry-After, 504 past the deadline.

The slow model is a registered ``FaultyModel(failure_rate=0, extra_latency_s=1.0)``; the
app allows one request in flight and one queued per model replica, and a 0.5 s deadline.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.helpers import instance, register_version, running_app, tiny_model


@pytest.fixture(scope="module")
def slow_app(serve_url, settings, registered_model):

    from cluster.registry import Registry
    from models.faulty import FaultyModel

    version = register_version(settings, registered_model, FaultyModel(tiny_model(3), 0.0, extra_latency_s=1.0))
    Registry(settings).set_alias(registered_model, "slow", version)
    with running_app(serve_url, settings, registered_model, app_name="slow", controller=False,
                     baseline=f"models:/{registered_model}@slow", candidate=None,
                     max_ongoing_requests=1, max_queued_requests=1, request_timeout_s=0.5, retry_after_s=2) as app:
        yield app


def test_a_call_past_the_deadline_is_504_json(slow_app):
    response = slow_app.predict([instance()])
    assert response.status_code == 504
    assert "did not answer" in response.json()["error"]["message"]


def test_overload_is_503_with_retry_after_and_never_500(slow_app):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: slow_app.predict([instance(i)]), range(8)))
    codes = [r.status_code for r in responses]
    assert 503 in codes and 500 not in codes, codes
    assert all(r.headers.get("retry-after") == "2" for r in responses if r.status_code == 503)
