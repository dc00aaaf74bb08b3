"""Admin calls leave audit lines (who, what, why, status, trace id) in the router replica's Serve log file.

That file (``<session>/logs/serve/replica_<app>_router_<id>.log``) is where an operator reads a
deployment's logs; the lines are JSON, so ``grep '"audit": true'`` or ``jq`` finds them.
"""

from __future__ import annotations

import uuid
from typing import Any

from cluster.processes import wait_until
from deployments.contracts import HEADER_ACTOR
from tests.serve.helpers import ADMIN_TOKEN, ServeApp, serve_log_records


def audit_line(app: ServeApp, trace_id: str) -> dict[str, Any] | None:
    found = [r for r in serve_log_records(app.name, "router") if r.get("audit") and r.get("trace_id") == trace_id]
    return found[0] if found else None


def admin_call(app: ServeApp, body: dict[str, Any] | None, token: str | None, **headers: str) -> str:
    """PUT /admin/traffic (GET without a body) with a fresh W3C trace id; returns that id."""
    trace_id = uuid.uuid4().hex
    headers = {**headers, "traceparent": f"00-{trace_id}-{'1' * 16}-01"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = app.client.request("GET" if body is None else "PUT", f"{app.url}/admin/traffic", json=body,
                                  headers=headers)
    assert response.headers["x-rayline-trace-id"] == trace_id
    return trace_id


def test_a_state_change_and_a_refused_call_are_audited_with_who_what_why_status_and_trace_id(static_app):
    changed = admin_call(static_app, {"weights": {"baseline": 1.0}, "actor": "alice", "reason": "ticket 7"},
                         ADMIN_TOKEN)
    refused = admin_call(static_app, {"weights": {"candidate": 1.0}, "actor": "mallory", "reason": "sneaky"},
                         "wrong-token")
    read = admin_call(static_app, None, ADMIN_TOKEN, **{HEADER_ACTOR: "bob"})   # a GET names its actor in a header
    assert wait_until(lambda: all(audit_line(static_app, t) for t in (changed, refused, read)), timeout_s=30)
    ok, denied, looked = (audit_line(static_app, t) for t in (changed, refused, read))
    assert (looked["actor"], looked["command"]) == ("bob", "traffic")
    assert (ok["actor"], ok["command"], ok["reason"], ok["status"]) == ("alice", "set_traffic", "ticket 7", 200)
    assert (denied["actor"], denied["command"], denied["status"]) == ("anonymous", "set_traffic", 401)
    assert denied["reason"] == "sneaky"   # what was claimed is kept; the actor is not trusted without the token
    assert static_app.admin("GET", "/admin/traffic").json()["weights"] == {"baseline": 1.0}
