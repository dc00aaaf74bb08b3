"""The champion/challenger quality gate on the real controller, through the router's admin API (real Serve, real
MLflow): the figures it compares are the validation figures tagged on each registered version, as the trainer
tags them. No load is needed: the gate decides before any traffic moves.
"""

from __future__ import annotations

import uuid

import pytest

from deployments.contracts import BASELINE
from tests.serve.helpers import (
    TERMINAL,
    admin_ok,
    phase,
    quality_tags,
    register_version,
    running_app,
    serve_log_records,
    spec,
    tiny_model,
    wait_for,
)


@pytest.fixture(scope="module")
def gated_app(serve_url, settings):
    """Champion v1 (val_accuracy 0.9) and challenger v2 (0.85) on the same dataset version, served; v3 with no
    figures registered beside them."""
    from cluster.registry import Registry

    model = f"gate-{uuid.uuid4().hex[:6]}"
    for seed, tags in enumerate((quality_tags(0.9), quality_tags(0.85), {})):
        register_version(settings, model, tiny_model(seed), tags=tags)
    registry = Registry(settings)
    registry.set_alias(model, "champion", "1")
    registry.set_alias(model, "challenger", "2")
    with running_app(serve_url, settings, model) as app:
        app.registry = registry
        yield app


def start(app, **body):
    return app.admin("POST", "/admin/rollout/start", json={"spec": spec(app), "actor": "ci", **body})


def abort_and_settle(app) -> None:
    admin_ok(app, "POST", "/admin/rollout/abort", {"actor": "ci", "reason": "test over"})
    wait_for(lambda: phase(app) in TERMINAL, timeout_s=60)


@pytest.mark.timeout(240)
def test_a_worse_challenger_is_refused_before_traffic_with_both_figures_and_the_override_is_audited(gated_app):
    app = gated_app
    refused = start(app)
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "candidate v2 val_accuracy 0.85 vs baseline v1 0.9 on serve-test version v1" in message, message
    assert "override_quality" in message
    assert phase(app) is None and admin_ok(app, "GET", "/admin/traffic")["weights"] == {BASELINE: 1.0}

    forced = start(app, override_quality=True, reason="accepting 5 points for latency")
    assert forced.status_code == 200, forced.text
    rollout_id = forced.json()["rollout"]["rollout_id"]
    try:
        first = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"][0]
        assert first["quality"]["overridden"] is True and first["quality"]["candidate"] == 0.85
        assert "quality gate overridden (override_quality)" in first["reason"] and first["actor"] == "ci"
        audited = wait_for(lambda: [r for r in serve_log_records(app.name, "RolloutController")
                                    if r.get("override_quality") and r.get("rollout_id") == rollout_id], 30)
        assert audited[0]["actor"] == "ci" and audited[0]["quality"]["baseline"] == 0.9
    finally:
        abort_and_settle(app)


@pytest.mark.timeout(240)
def test_a_better_challenger_passes_and_the_start_event_records_both_figures(gated_app):
    app = gated_app
    app.registry.set_version_tag(app.model, "2", "val_accuracy", "0.95")
    try:
        started = start(app)
        assert started.status_code == 200, started.text
        first = admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"][0]
        assert first["quality"] | {"passed": True, "baseline": 0.9, "candidate": 0.95} == first["quality"]
        assert first["quality"]["dataset_version"] == "v1" and first["quality"]["overridden"] is False
        abort_and_settle(app)
    finally:
        app.registry.set_version_tag(app.model, "2", "val_accuracy", "0.85")


def test_a_candidate_without_figures_fails_closed_with_what_is_missing(gated_app):
    refused = gated_app.admin("POST", "/admin/rollout/start",
                              json={"spec": spec(gated_app, candidate="3"), "actor": "ci"})
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "no primary-metric" in message and "v3: no figures" in message and "jobs.evaluate" in message
