"""A controller-driven shadow run on a real Serve app: callers never see the candidate; a failing one is stopped.

The candidate is a registered ``FaultyModel`` that raises on half of its calls inside its
replica; load is real HTTP from ``cluster.loadgen``; the mirrored copies are counted by the
router's own Prometheus endpoint.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.loadgen import BackgroundLoad
from deployments.contracts import BASELINE, CANDIDATE
from tests.faults.figures import record
from tests.serve.helpers import (
    TERMINAL,
    ServeApp,
    admin_ok,
    instance,
    phase,
    register_test_model,
    running_app,
    serve_log_records,
    spec,
    wait_for,
)

LOAD_RPS = 20.0


@pytest.fixture(scope="module")
def shadowed_app(serve_url, settings):
    """v1 healthy @champion, v2 @challenger that raises on 50 % of calls."""
    with running_app(serve_url, settings, register_test_model(settings, candidate_failure_rate=0.5)) as app:
        yield app


def mirrored_to_candidate(app: ServeApp) -> float:
    """Shadow copies the router has sent to the candidate so far (its /metrics counter)."""
    text = app.client.get(f"{app.url}/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "rayline_serve_shadow_requests_total" and s.labels.get("variant") == CANDIDATE)


def test_a_failing_candidate_in_shadow_never_serves_a_caller_and_is_stopped(shadowed_app):
    app = shadowed_app
    shadow_spec = spec(app, mode="shadow", shadow={"passing_checks": 3}, min_requests=30)
    load = BackgroundLoad(app.url, app.model, [instance(i) for i in range(50)], rate_per_s=LOAD_RPS).start()
    try:
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": shadow_spec, "actor": "ci", "reason": "dark launch"})
        started = time.monotonic()
        wait_for(lambda: phase(app) in TERMINAL, timeout_s=120)
        decided_s = time.monotonic() - started
        rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
        wait_for(lambda: admin_ok(app, "GET", "/admin/traffic")["epoch"] >= rollout["decision"]["epoch"])
        time.sleep(0.5)                        # copies already in flight when the router switched
        stopped_at = mirrored_to_candidate(app)
        time.sleep(1.5)
        still = mirrored_to_candidate(app)
    finally:
        result = load.stop()
    timeline = admin_ok(app, "POST", "/admin/rollout/report", {"rollout_id": rollout["rollout_id"]})["timeline"]
    judged = [p["variants"][CANDIDATE] for p in timeline if CANDIDATE in p["variants"]]
    assert rollout["phase"] == "rolled_back" and "error rate" in rollout["decision"]["reason"]
    assert judged and max(p["error_rate"] for p in judged) > 0.05, "the candidate was judged on its copies"
    assert result.sent > 0 and result.ok == result.sent, result.status_counts
    assert set(result.variants) == {BASELINE}, "a caller was answered by the candidate"
    assert stopped_at > 0 and still == stopped_at, "copies still reach the candidate after the decision"
    audited = [r for r in serve_log_records(app.name, "RolloutController")
               if r.get("audit") and r.get("rollout_id") == rollout["rollout_id"]]
    assert {"shadowing", "rolling_back"} <= {r["to_phase"] for r in audited}
    record("test_a_failing_candidate_in_shadow_never_serves_a_caller_and_is_stopped",
           seconds_to_rollback=round(decided_s, 2), mirrored_copies=int(stopped_at), caller_requests=result.sent,
           caller_failures=result.failed, candidate_error_rate_max=round(max(p["error_rate"] for p in judged), 3))
