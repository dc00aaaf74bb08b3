"""A controller-driven shadow run on a real Serve app: callers never see the candidate; a failing one is stopped.

The candidate is a registered ``FaultyModel`` that raises on half of its calls inside its
replica; load is real HTTP from ``cluster.loadgen``; the mirrored copies are counted by the
router's own Prometheus endpoint.
"""

from __future__ import annotations

import time

import pytest

from cluster.loadgen import BackgroundLoad
from deployments.contracts import BASELINE, CANDIDATE
from tests.faults.figures import record
from tests.prometheus_text import sample_sum
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
SETTLE_S = 0.5            # copies still sent come ~10 per SETTLE_S: the count never holds still that long
SETTLE_TIMEOUT_S = 30.0   # copies in flight at the switch end within the router's request_timeout_s (10 s)


@pytest.fixture(scope="module")
def shadowed_app(serve_url, settings):
    """v1 healthy @champion, v2 @challenger that raises on 50 % of calls."""
    with running_app(serve_url, settings, register_test_model(settings, candidate_failure_rate=0.5)) as app:
        yield app


def mirrored_to_candidate(app: ServeApp) -> float:
    """Shadow copies the router has sent to the candidate so far (its /metrics counter)."""
    text = app.client.get(f"{app.url}/metrics").text
    return sample_sum(text, "rayline_serve_shadow_requests_total", variant=CANDIDATE)


def settled_mirror_count(app: ServeApp) -> float:
    """:func:`mirrored_to_candidate` once it held still for SETTLE_S. A copy counts when its answer comes back, so the
    copies already in flight when the router switched still count for a while (longer on a loaded machine); copies
    still sent (every caller request, LOAD_RPS a second) never let it settle."""
    counts = [mirrored_to_candidate(app)]

    def held_still() -> bool:
        time.sleep(SETTLE_S)
        counts.append(mirrored_to_candidate(app))
        return counts[-1] == counts[-2]

    try:
        wait_for(held_still, timeout_s=SETTLE_TIMEOUT_S, every_s=0)
    except AssertionError:
        raise AssertionError(f"copies still reach the candidate after the decision: {counts}") from None
    return counts[-1]


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
        stopped_at = settled_mirror_count(app)   # copies already in flight when the router switched have ended
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
