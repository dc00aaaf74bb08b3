"""The admin API: bearer token required (401 JSON otherwise), errors as JSON 4xx; the predict token when set."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.serve.helpers import ADMIN_TOKEN, instance, running_app

PREDICT_TOKEN = "test-predict-token"

ADMIN_CALLS = [("GET", "/admin/rollout"), ("GET", "/admin/rollout/history"), ("GET", "/admin/traffic"),
               ("POST", "/admin/rollout/pause"), ("POST", "/admin/rollout/abort"), ("PUT", "/admin/traffic")]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_calls_without_the_token_get_401(static_app, method, path):
    for token in (None, "wrong-token"):
        response = static_app.admin(method, path, json={"reason": "x"}, token=token)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["field"] == "authorization"
        assert response.headers["www-authenticate"] == "Bearer"


def test_predict_stays_open_when_no_predict_token_is_configured(static_app):
    from tests.serve.helpers import instance

    assert static_app.predict([instance()]).status_code == 200


def test_with_the_token_admin_calls_answer_json(static_app):
    assert static_app.admin("GET", "/admin/traffic").json()["weights"] == {"baseline": 1.0}
    assert static_app.admin("GET", "/admin/rollout/history").json() == []


def test_controller_refusals_and_bad_requests_are_json_4xx(static_app):
    refused = static_app.admin("POST", "/admin/rollout/promote", json={"actor": "t", "reason": "no controller"})
    assert refused.status_code == 409 and "no rollout controller" in refused.json()["error"]["message"]
    unknown = static_app.admin("POST", "/admin/rollout/explode", json={})
    assert unknown.status_code == 404
    bad = static_app.admin("PUT", "/admin/traffic", json={"weights": {"nope": 1}})
    assert bad.status_code == 400 and "unknown variants" in bad.json()["error"]["message"]


@pytest.fixture(scope="module")
def locked_app(serve_url, settings, registered_model):
    """The baseline alone, with predict locked by a token read (at deploy time) from the env var the config names."""
    env = f"RAYLINE_TEST_PREDICT_TOKEN_{uuid.uuid4().hex[:6].upper()}"
    os.environ[env] = PREDICT_TOKEN
    try:
        with running_app(serve_url, settings, registered_model, app_name="locked", candidate=None,
                         controller=False, predict_token_env=env) as app:
            os.environ.pop(env)  # read once, at deploy time
            yield app
    finally:
        os.environ.pop(env, None)


def test_a_predict_token_locks_predict_to_that_token_alone(locked_app):
    def predict(token):
        return locked_app.predict([instance()], headers={"Authorization": f"Bearer {token}"} if token else None)

    for token in (None, "wrong-token", ADMIN_TOKEN):
        refused = predict(token)
        assert refused.status_code == 401, (token, refused.text)
        assert refused.json()["error"]["field"] == "authorization"
        assert refused.headers["www-authenticate"] == "Bearer"
    allowed = predict(PREDICT_TOKEN)
    assert allowed.status_code == 200 and len(allowed.json()["predictions"]) == 1
    assert locked_app.admin("GET", "/admin/traffic", token=PREDICT_TOKEN).status_code == 401
