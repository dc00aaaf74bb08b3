"""Serve fixtures: one Serve instance per session, one registered model, one app per module.

``serve_app`` is "a running app with baseline v1 (@champion) and candidate v2 (@challenger)"
with the rollout controller wired when ``deployments.controller`` exists; the rollout suite
uses it as is, or ``deploy_app`` for a variant (e.g. a faulty candidate). Everything is
real: Ray, Serve over HTTP, MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve.helpers import ServeApp, register_test_model, running_app, wait_for_traffic


@pytest.fixture(scope="session")
def registered_model(settings) -> str:
    """A registered model with v1 @champion and v2 @challenger (both healthy)."""
    return register_test_model(settings)


@pytest.fixture(scope="module")
def serve_app(serve_url: str, settings, registered_model: str) -> Iterator[ServeApp]:
    """A running app: baseline models:/M@champion (v1), candidate models:/M@challenger (v2), admin token set."""
    with running_app(serve_url, settings, registered_model) as app:
        yield app


@pytest.fixture(scope="session")
def static_app(serve_url: str, settings, registered_model: str) -> Iterator[ServeApp]:
    """The same two versions without a rollout controller: traffic is set by hand (PUT /admin/traffic).

    Shared by the data-plane suites; a test that changes the split puts 100 % baseline back. Its model
    calls go as Ray actor calls (``model_calls: actor``), so the data-plane tests cover that transport
    while the rollout suites run on the default (gRPC).
    """
    with running_app(serve_url, settings, registered_model, app_name="static", controller=False,
                     model_calls="actor") as app:
        yield app


@pytest.fixture
def split(static_app: ServeApp):
    """Set the static app's traffic for one test (weights, shadow) and restore 100 % baseline after."""

    def set_split(weights: dict[str, float], shadow: str | None = None) -> dict:
        response = static_app.admin("PUT", "/admin/traffic", {"weights": weights, "shadow": shadow,
                                                              "reason": "test split"})
        assert response.status_code == 200, response.text
        wait_for_traffic(static_app, response.json()["epoch"])
        return response.json()

    yield set_split
    set_split({"baseline": 1.0})
