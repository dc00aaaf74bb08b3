"""A fresh install: the serving app deploys before any alias exists and starts serving when one appears.

Real Ray Serve over HTTP and the real MLflow server. The app is deployed for a registered model
with neither ``champion`` nor ``challenger`` set (what the Helm chart's RayService meets on a
fresh install): it must come up RUNNING, say what to run (predict 503 + Retry-After, ``/readyz``,
``rayline serve status``), then serve each alias once it is set in MLflow, without a redeploy
(KubeRay never resubmits a Serve config whose build failed).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from typer.testing import CliRunner

from cluster.cli.main import app as cli
from cluster.registry import Registry
from deployments.app import build
from deployments.serve_config import parse_config
from tests.serve.helpers import ADMIN_TOKEN, instance, register_version, tiny_model, wait_for

pytestmark = [pytest.mark.timeout(180)]

RESOLVE_INTERVAL_S = 1.0


@pytest.fixture
def unaliased_app(serve_url: str, settings):
    """A registered model with two versions and no alias, deployed with a 50/50 static split."""
    from ray import serve

    model = f"boot-{uuid.uuid4().hex[:6]}"
    v1 = register_version(settings, model, tiny_model(0))
    v2 = register_version(settings, model, tiny_model(1))
    name = f"boot-{uuid.uuid4().hex[:6]}"
    cfg = parse_config({
        "model_name": model, "baseline": f"models:/{model}@champion", "candidate": f"models:/{model}@challenger",
        "tracking_uri": str(settings.mlflow_tracking_uri), "state_dir": str(settings.state_dir / name),
        "controller": False, "traffic": {"baseline": 0.5, "candidate": 0.5}, "num_cpus": 0.1,
        "router_num_cpus": 0.1, "resolve_interval_s": RESOLVE_INTERVAL_S})
    serve.run(build(cfg, admin_token=ADMIN_TOKEN), name=name, route_prefix=f"/{name}")
    with httpx.Client(base_url=f"{serve_url}/{name}", timeout=30) as client:
        yield model, name, client, v1, v2
    serve.delete(name)


def _predict(client: httpx.Client, model: str, user: int) -> httpx.Response:
    return client.post(f"/v1/models/{model}:predict", json={"instances": [instance(user, user_id=f"u{user}")]})


def test_app_without_aliases_comes_up_and_serves_each_alias_once_set(unaliased_app, settings, monkeypatch):
    from ray import serve

    model, name, client, v1, v2 = unaliased_app
    assert serve.status().applications[name].status == "RUNNING"

    # No champion: the app is up, predict says what is missing and what to run.
    response = _predict(client, model, 0)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["rule"] == "model_pending"
    assert "'champion'" in error["message"] and f"rayline models alias {model} champion VERSION" in error["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["waiting"]) == {"baseline", "candidate"}
    monkeypatch.setenv("RAYLINE_ADMIN_TOKEN", ADMIN_TOKEN)
    status = CliRunner().invoke(cli, ["serve", "status", "--url", str(client.base_url)])
    assert status.exit_code == 0, status.output
    assert f"baseline: waiting for alias 'champion' of model '{model}'" in status.output
    assert f"rayline models alias {model} champion VERSION" in status.output

    # champion set in MLflow: served within a few seconds, no redeploy; the pending candidate gets no traffic.
    registry = Registry(settings)
    registry.set_alias(model, "champion", v1)
    first = wait_for(lambda: (r := _predict(client, model, 0)).status_code == 200 and r.json(), timeout_s=30,
                     every_s=0.2)
    assert first["version"] == v1
    answers = [_predict(client, model, user) for user in range(20)]
    assert {(a.status_code, a.json()["variant"], a.json()["version"]) for a in answers} == {(200, "baseline", v1)}

    # challenger set: the router learns its version and the 50/50 split reaches it.
    registry.set_alias(model, "challenger", v2)
    wait_for(lambda: client.get(f"/v1/models/{model}").json()["versions"] == {"baseline": v1, "candidate": v2},
             timeout_s=30, every_s=0.2)
    served = {(a.json()["variant"], a.json()["version"]) for a in (_predict(client, model, u) for u in range(40))}
    assert served == {("baseline", v1), ("candidate", v2)}
    assert client.get("/readyz").json()["waiting"] == {}
    assert serve.status().applications[name].status == "RUNNING"
