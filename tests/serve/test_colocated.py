"""The colocated topology (``colocate: true``): every version loaded inside the router's replicas.

Real Serve over HTTP with the session's two registered versions, a static 50/50 split. The
same router code routes, so these check the wiring: each variant answers with its own
version, the split and stickiness hold, bad input stays a 4xx, and the app really has no
model deployments (no second hop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from deployments.contracts import HEADER_FORCE, HEADER_STICKY, HEADER_VARIANT, HEADER_VERSION
from tests.serve.helpers import ServeApp, instance, running_app

REQUESTS = 300


@pytest.fixture(scope="module")
def colocated_app(serve_url: str, settings, registered_model: str) -> Iterator[ServeApp]:
    with running_app(serve_url, settings, registered_model, app_name="colocated", controller=False, colocate=True,
                     traffic={"baseline": 0.5, "candidate": 0.5}) as app:
        yield app


def test_the_app_has_no_model_deployments_only_the_router(colocated_app):
    from ray import serve

    deployments = set(serve.status().applications[colocated_app.name].deployments)
    assert not any(name.startswith("model-") for name in deployments), deployments
    assert "router" in deployments


def test_each_variant_answers_with_its_own_version_in_the_configured_split(colocated_app):
    served: Counter[str] = Counter()
    for i in range(REQUESTS):
        response = colocated_app.predict([instance(i)])
        assert response.status_code == 200, response.text
        variant = response.headers[HEADER_VARIANT]
        assert response.headers[HEADER_VERSION] == response.json()["version"] == colocated_app.versions[variant]
        served[variant] += 1
    assert 0.35 < served["candidate"] / REQUESTS < 0.65, served   # binomial(300, 0.5): ± 5 sd


def test_sticky_and_forced_assignment(colocated_app):
    for user in ("ann", "bob", "cy"):
        seen = {colocated_app.predict([instance(1)], {HEADER_STICKY: user}).headers[HEADER_VARIANT] for _ in range(5)}
        assert len(seen) == 1, (user, seen)
    forced = colocated_app.predict([instance(2)], {HEADER_FORCE: "candidate"})
    assert forced.headers[HEADER_VARIANT] == "candidate" and forced.json()["version"] == colocated_app.versions[
        "candidate"]


def test_bad_input_is_a_4xx_naming_the_field_and_the_replica_stays_ready(colocated_app):
    bad = colocated_app.predict([instance(0, x1="not a number")])
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "x1", bad.text
    ready = colocated_app.client.get(f"{colocated_app.url}/readyz")
    assert ready.status_code == 200 and ready.json()["not_ready"] == []
    described = colocated_app.client.get(f"{colocated_app.url}/v1/models/{colocated_app.model}").json()
    assert described["versions"] == colocated_app.versions
