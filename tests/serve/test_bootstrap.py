"""A fresh install: the serving app deploys before any alias exists and starts serving when one appears.

Real Ray Serve over HTTP and the real MLflow server. The app is deployed for a registered model
with neither ``champion`` nor ``challenger`` set (what the Helm chart's RayService meets on a
fresh install): it must come up RUNNING, say what to run (predict 503 + Retry-After, ``/readyz``,
``rayline serve status``), then serve each alias once it is set in MLflow, without a redeploy
(KubeRay never resubmits a Serve config whose build failed).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def unaliased_app(serve_url: str, settings, model: str, **config: Any) -> Iterator[tuple[httpx.Client, str, str]]:
    """``model`` registered with two versions and no alias, deployed as ``config`` says: (client, v1, v2)."""
    from ray import serve

    v1 = register_version(settings, model, tiny_model(0))
    v2 = register_version(settings, model, tiny_model(1))
    name = f"boot-{uuid.uuid4().hex[:6]}"
    cfg = parse_config({
        "model_name": model, "baseline": f"models:/{model}@champion", "tracking_uri": str(settings.mlflow_tracking_uri),
        "state_dir": str(settings.state_dir / name), "num_cpus": 0.1, "router_num_cpus": 0.1,
        "resolve_interval_s": RESOLVE_INTERVAL_S, **config})
    serve.run(build(cfg, admin_token=ADMIN_TOKEN), name=name, route_prefix=f"/{name}")
    try:
        assert serve.status().applications[name].status == "RUNNING"
        with httpx.Client(base_url=f"{serve_url}/{name}", timeout=30) as client:
            yield client, v1, v2
        assert serve.status().applications[name].status == "RUNNING"   # never redeployed, never failed
    finally:
        serve.delete(name)


def _predict(client: httpx.Client, model: str, user: int) -> httpx.Response:
    return client.post(f"/v1/models/{model}:predict", json={"instances": [instance(user, user_id=f"u{user}")]})


def _waits_for_champion(client: httpx.Client, model: str) -> None:
    """Predict is a JSON 503 + Retry-After naming the missing alias and the command to run."""
    response = _predict(client, model, 0)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["rule"] == "model_pending"
    assert "'champion'" in error["message"] and f"rayline models alias {model} champion VERSION" in error["message"]


def _serves_once_set(client: httpx.Client, model: str, settings, alias: str, version: str) -> dict[str, Any]:
    """Set ``alias`` in MLflow; the first 200 (within seconds, no redeploy) comes back."""
    Registry(settings).set_alias(model, alias, version)
    return wait_for(lambda: (r := _predict(client, model, 0)).status_code == 200 and r.json(), timeout_s=30,
                    every_s=0.2)


def test_app_without_aliases_comes_up_and_serves_each_alias_once_set(serve_url, settings, monkeypatch):
    model = f"boot-{uuid.uuid4().hex[:6]}"
    split = {"candidate": f"models:/{model}@challenger", "controller": False,
             "traffic": {"baseline": 1, "candidate": 1}}
    with unaliased_app(serve_url, settings, model, **split) as (client, v1, v2):
        # No champion: the app is up and says what is missing and what to run.
        _waits_for_champion(client, model)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and set(ready.json()["waiting"]) == {"baseline", "candidate"}
        monkeypatch.setenv("RAYLINE_ADMIN_TOKEN", ADMIN_TOKEN)
        status = CliRunner().invoke(cli, ["serve", "status", "--url", str(client.base_url)])
        assert status.exit_code == 0, status.output
        assert f"baseline: waiting for alias 'champion' of model '{model}'" in status.output
        assert f"rayline models alias {model} champion VERSION" in status.output

        # champion set: served without a redeploy; the candidate, still waiting, gets no traffic.
        assert _serves_once_set(client, model, settings, "champion", v1)["version"] == v1
        answers = [_predict(client, model, user) for user in range(20)]
        assert {(a.status_code, a.json()["variant"], a.json()["version"]) for a in answers} == {(200, "baseline", v1)}

        # challenger set: the router learns its version and the 50/50 split reaches it.
        Registry(settings).set_alias(model, "challenger", v2)
        wait_for(lambda: client.get(f"/v1/models/{model}").json()["versions"] == {"baseline": v1, "candidate": v2},
                 timeout_s=30, every_s=0.2)
        served = {(a.json()["variant"], a.json()["version"]) for a in (_predict(client, model, u) for u in range(40))}
        assert served == {("baseline", v1), ("candidate", v2)}
        assert client.get("/readyz").json()["waiting"] == {}


def test_colocated_app_with_the_rollout_controller_serves_the_first_champion(serve_url, settings):
    """The chart's default (rollout controller) in the colocated topology: the router's in-process model waits too."""
    from deployments.app import controller_available

    model = f"boot-{uuid.uuid4().hex[:6]}"
    with unaliased_app(serve_url, settings, model, colocate=True, controller=controller_available()) as (client, v1, _):
        _waits_for_champion(client, model)
        assert _serves_once_set(client, model, settings, "champion", v1)["version"] == v1
        wait_for(lambda: client.get(f"/v1/models/{model}").json()["versions"] == {"baseline": v1}, timeout_s=30,
                 every_s=0.2)



def test_a_rollout_on_a_fresh_install_checks_the_versions_its_slots_loaded_after_build(serve_url, settings):
    """The chart's default (rollout controller, separate replica sets) on a fresh install: the slots resolve their
    aliases after the app was built, and the routers tell the controller what loaded. A start whose challenger
    moved on since is a 409 naming both pairs (the old controller, knowing no versions, started it and would have
    canaried v2 and then promoted v3); a start that matches what the slots serve goes through."""
    from deployments.app import controller_available

    model = f"boot-{uuid.uuid4().hex[:6]}"
    config = {"candidate": f"models:/{model}@challenger", "controller": controller_available()}
    with unaliased_app(serve_url, settings, model, **config) as (client, v1, v2):
        v3 = register_version(settings, model, tiny_model(2))
        registry = Registry(settings)
        registry.set_alias(model, "challenger", v2)
        _serves_once_set(client, model, settings, "champion", v1)
        wait_for(lambda: client.get(f"/v1/models/{model}").json()["versions"] == {"baseline": v1, "candidate": v2},
                 timeout_s=30, every_s=0.2)
        registry.set_alias(model, "challenger", v3)   # the candidate slot stays pinned to v2
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        body = {"spec": {"model": model, "baseline": "champion", "candidate": "challenger", "steps": [50, 100],
                         "interval_s": 1}, "actor": "ci"}

        def refused_naming_the_served_pair() -> bool:
            r = client.post("/admin/rollout/start", json=body, headers=headers)
            assert r.status_code == 409, r.text
            return f"serves baseline v{v1} / candidate v{v2}" in r.json()["error"]["message"]

        wait_for(refused_naming_the_served_pair, timeout_s=10, every_s=0.3)
        registry.set_alias(model, "challenger", v2)
        started = client.post("/admin/rollout/start", json=body, headers=headers)
        assert started.status_code == 200, started.text
        assert started.json()["rollout"]["candidate_version"] == v2
