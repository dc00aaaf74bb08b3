"""The router on a real Serve app with two registered versions (v1 baseline, v2 candidate), over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from scipy.stats import binomtest

from deployments.contracts import HEADER_FORCE, HEADER_STICKY, HEADER_TRACE, HEADER_VARIANT, HEADER_VERSION
from tests.serve.helpers import instance, wait_for_traffic

# The split test's draws and its binomial bound: correct code fails it once in 10^4 runs (2000 draws at 1e-3 failed it
# about once in 10^3); a 25 % or 35 % split still fails it 98 % of the time (2000 at 1e-3: 93-96 %).
REQUESTS = 3000
SPLIT_FALSE_FAILURE = 1e-4


def serve_many(app, n: int, headers_of=lambda i: None, instances_of=lambda i: [instance(i)]) -> list[httpx.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: app.predict(instances_of(i), headers_of(i)), range(n)))


def test_every_response_names_variant_version_and_trace(static_app):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = static_app.predict([instance(1)], {"traceparent": traceparent})
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == response.headers[HEADER_VARIANT] == "baseline"
    assert body["version"] == response.headers[HEADER_VERSION] == static_app.versions["baseline"]
    assert body["predictions"][0] in ("no", "yes") and body["model"] == static_app.model
    assert response.headers[HEADER_TRACE] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert response.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


def test_weights_are_honoured_within_statistical_tolerance(static_app, split):
    split({"baseline": 0.7, "candidate": 0.3})
    responses = serve_many(static_app, REQUESTS)
    assert all(r.status_code == 200 for r in responses)
    on_candidate = sum(r.headers[HEADER_VARIANT] == "candidate" for r in responses)
    assert binomtest(on_candidate, REQUESTS, 0.3).pvalue > SPLIT_FALSE_FAILURE, on_candidate   # 803..998 pass
    versions = {r.headers[HEADER_VARIANT]: r.headers[HEADER_VERSION] for r in responses}
    assert versions == static_app.versions


def test_sticky_keys_keep_their_variant_and_both_variants_get_users(static_app, split):
    split({"baseline": 0.5, "candidate": 0.5})
    users = [f"user-{i}" for i in range(40)]
    by_header = serve_many(static_app, 200, headers_of=lambda i: {HEADER_STICKY: users[i % 40]})
    by_field = serve_many(static_app, 200, instances_of=lambda i: [instance(i, user_id=users[i % 40])])
    for responses in (by_header, by_field):
        seen: dict[str, set[str]] = {}
        for i, r in enumerate(responses):
            seen.setdefault(users[i % 40], set()).add(r.headers[HEADER_VARIANT])
        assert all(len(variants) == 1 for variants in seen.values())
        assert {v for variants in seen.values() for v in variants} == {"baseline", "candidate"}
    # a key is the same user whether it comes as header or body field
    assert [r.headers[HEADER_VARIANT] for r in by_header[:40]] == [r.headers[HEADER_VARIANT] for r in by_field[:40]]


def test_a_forced_variant_overrides_the_split(static_app):
    response = static_app.predict([instance(2)], {HEADER_FORCE: "candidate"})
    assert response.headers[HEADER_VARIANT] == "candidate"
    assert response.json()["version"] == static_app.versions["candidate"]
    unknown = static_app.predict([instance(2)], {HEADER_FORCE: "nope"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == HEADER_FORCE


def test_shadow_traffic_reaches_the_candidate_but_never_the_caller(static_app, split):
    split({"baseline": 1.0}, shadow="candidate")
    responses = serve_many(static_app, 100)
    assert {(r.headers[HEADER_VARIANT], r.json()["version"]) for r in responses} == {
        ("baseline", static_app.versions["baseline"])}

    def shadowed() -> int:
        windows = static_app.admin("GET", "/admin/rollout").json()["windows"]
        return windows.get("candidate/shadow", {}).get("requests", 0)

    from cluster.processes import wait_until

    assert wait_until(lambda: shadowed() >= 90, timeout_s=30)


def test_invalid_fields_are_422_naming_the_field(static_app):
    cases = {"x1": {"x1": "abc"}, "color": {"color": "purple"}, "x3": {"x3": None}}
    for field, override in cases.items():
        response = static_app.predict([instance(0, **override)])
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    missing = static_app.predict([{"x1": 1.0, "x2": 2.0, "color": "red"}])
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "x3"


def test_an_oversized_body_is_413(static_app):
    response = static_app.predict([instance(0, note="x" * 2_000_000)])
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"


def test_a_wrong_model_name_is_404(static_app):
    response = static_app.client.post(f"{static_app.url}/v1/models/other:predict", json={"instances": [instance()]})
    assert response.status_code == 404


def test_health_readiness_and_model_description(static_app):
    assert static_app.client.get(f"{static_app.url}/healthz").status_code == 200
    ready = static_app.client.get(f"{static_app.url}/readyz")
    assert ready.status_code == 200 and ready.json()["variants"] == ["baseline", "candidate"]
    described = static_app.client.get(f"{static_app.url}/v1/models/{static_app.model}").json()
    assert [f["name"] for f in described["fields"]] == ["x1", "x2", "x3", "color"]
    assert described["versions"] == static_app.versions


def test_per_variant_metrics_are_exported_for_prometheus(static_app):
    static_app.predict([instance(3)], {HEADER_FORCE: "candidate"})
    text = static_app.client.get(f"{static_app.url}/metrics").text
    assert 'rayline_serve_requests_total{code="200",variant="candidate",version="2"}' in text
    assert "rayline_serve_request_latency_seconds_bucket" in text
    assert 'rayline_serve_model_metric{metric="confidence",variant="candidate"' in text


def test_windows_reach_the_controller_with_errors_by_class(static_app):
    """What the router served is reported (requests, 4xx, latencies, model metric) within a few reports."""
    from cluster.processes import wait_until

    before = static_app.admin("GET", "/admin/rollout").json()["windows"].get("baseline", {"errors_4xx": 0})
    static_app.predict([instance(0, x1="bad")])
    static_app.predict([instance(0)])

    def reported() -> dict:
        return static_app.admin("GET", "/admin/rollout").json()["windows"].get("baseline", {})

    assert wait_until(lambda: reported().get("errors_4xx", 0) > before["errors_4xx"], timeout_s=30)
    window = reported()
    assert window["p50_ms"] > 0 and 0 < window["model_metrics"]["confidence"] <= 1


def test_the_split_set_by_hand_is_what_the_router_reports(static_app, split):
    traffic = split({"baseline": 3, "candidate": 1})
    assert traffic["weights"] == {"baseline": 0.75, "candidate": 0.25}
    wait_for_traffic(static_app, traffic["epoch"])
    assert static_app.admin("GET", "/admin/traffic").json()["weights"] == traffic["weights"]
