"""Feedback with delayed labels on a real Serve app (router + two registered versions + controller, MLflow).

Labels come back late and shuffled, some after the router that issued the ids was killed and replaced:
each must join the variant and version that served it, be readable from the feedback store, and reach
the rollout controller. The two versions are equally healthy; the test client's labels say the candidate
is wrong, so only the outcome gate can stop it: rolled back in canary mode, the loser of an A/B test.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from deployments.contracts import BASELINE, CANDIDATE, HEADER_FORCE, HEADER_REQUEST_ID, REPORT_INTERVAL_S
from deployments.feedback import FeedbackStore
from tests.serve import helpers
from tests.serve.helpers import ServeApp, admin_ok, instance, register_test_model, running_app, wait_for
from tests.serve.test_rollout import Load

pytestmark = pytest.mark.slow
OTHER = {"yes": "no", "no": "yes"}


@pytest.fixture(scope="module")
def app(serve_url, settings):
    with running_app(serve_url, settings, register_test_model(settings)) as served:
        yield served


def feedback_url(app: ServeApp, model: str | None = None) -> str:
    return f"{app.url}/v1/models/{model or app.model}:feedback"


def post_feedback(app: ServeApp, body: Any) -> Any:
    return app.client.post(feedback_url(app), json=body)


def _router_id(app: ServeApp) -> str | None:
    r = app.client.get(f"{app.url}/healthz")
    return r.json()["router"] if r.status_code == 200 else None


def _kill_router(app: ServeApp) -> None:
    """Kill the router's one replica; Serve replaces it. Returns once the new one answers."""
    import ray

    before = _router_id(app)
    (found,) = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if app.name in a["name"] and "#router#" in a["name"]]
    ray.kill(ray.get_actor(found["name"], namespace=found["namespace"]), no_restart=True)
    wait_for(lambda: _router_id(app) not in (None, before), timeout_s=90, every_s=0.5)


@pytest.mark.timeout(150)
def test_late_shuffled_labels_join_the_version_that_served_them_even_after_the_router_was_replaced(app, settings):
    served = []   # (request_id, index, variant, version, prediction)
    for variant in (BASELINE, CANDIDATE):
        for i in range(4):
            r = app.predict([instance(i)], headers={HEADER_FORCE: variant})
            assert r.status_code == 200 and r.headers[HEADER_REQUEST_ID] == r.json()["request_id"]
            served.append((r.json()["request_id"], 0, variant, r.json()["version"], r.json()["predictions"][0]))
        batch = app.predict([instance(i) for i in range(3)], headers={HEADER_FORCE: variant}).json()
        served += [(batch["request_id"], i, variant, batch["version"], p) for i, p in enumerate(batch["predictions"])]
    time.sleep(3 * REPORT_INTERVAL_S)   # the windows of those requests have been reported
    random.Random(7).shuffle(served)
    early, late = served[:5], served[5:]
    for request_id, index, variant, version, prediction in early:
        r = post_feedback(app, {"request_id": request_id, "index": index, "label": prediction})
        assert r.status_code == 200, r.text
        assert r.json()["variant"] == variant and r.json()["version"] == version == app.versions[variant]
        assert r.json()["outcomes"] == {"correct": 1.0}
    _kill_router(app)   # the rest arrive at a router that never saw those requests
    for request_id, index, variant, version, prediction in late:
        wrong = variant == CANDIDATE
        r = post_feedback(app, {"request_id": request_id, "index": index,
                                "label": OTHER[prediction] if wrong else prediction})
        assert r.status_code == 200, r.text
        assert (r.json()["variant"], r.json()["version"]) == (variant, version)
        assert r.json()["outcomes"] == {"correct": 0.0 if wrong else 1.0}
    again = post_feedback(app, {"request_id": late[0][0], "index": late[0][1], "label": "yes"})
    assert again.status_code == 409 and again.json()["error"]["field"] == "request_id"

    stored = FeedbackStore(str(settings.state_dir / app.name / "feedback"), app.model).read()
    assert {(r["request_id"], r["index"]): (r["variant"], r["version"]) for r in stored} == \
        {(rid, index): (variant, version) for rid, index, variant, version, _ in served}
    exposition = app.client.get(f"{app.url}/metrics").text   # the new router counted what it joined
    assert (f'rayline_serve_outcome_count{{outcome="correct",variant="candidate",'
            f'version="{app.versions[CANDIDATE]}"}}') in exposition


@pytest.mark.timeout(60)
def test_bad_feedback_is_a_4xx_naming_the_field(app):
    rid = app.predict([instance(0)]).json()["request_id"]
    forged = rid[:-4] + ("AAAA" if not rid.endswith("AAAA") else "BBBB")
    cases = [
        ({"request_id": rid}, 422, "body"),
        ({"request_id": rid, "label": "yes", "reward": 1}, 422, "body"),
        ({"request_id": rid, "reward": "a lot"}, 422, "reward"),
        ({"request_id": rid, "index": 1, "label": "yes"}, 422, "index"),
        ({"request_id": forged, "label": "yes"}, 422, "request_id"),
        ({"label": "yes"}, 422, "request_id"),
    ]
    for body, status, field in cases:
        r = post_feedback(app, body)
        assert (r.status_code, r.json()["error"]["field"]) == (status, field), (body, r.text)
    r = app.client.post(feedback_url(app), content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    assert app.client.post(feedback_url(app, "other"), json={"request_id": rid, "label": "yes"}).status_code == 404


class LabelledLoad(Load):
    """Predict traffic whose labels come back late and shuffled, saying the candidate is always wrong."""

    LAG = 8   # responses a thread holds before posting their labels, shuffled

    def _run(self, seed: int) -> None:
        rng, i, waiting = random.Random(seed), seed * 1000, []
        while not self._stop.is_set():
            i += 1
            try:
                r = self.app.predict([instance(i)])
                if r.status_code != 200:
                    continue
                body = r.json()
                label = OTHER[body["predictions"][0]] if body["variant"] == CANDIDATE else body["predictions"][0]
                waiting.append({"request_id": body["request_id"], "label": label})
                if len(waiting) >= self.LAG:
                    rng.shuffle(waiting)
                    for fb in waiting:
                        post_feedback(self.app, fb)
                    waiting = []
            except Exception:
                continue


OUTCOME_GATE = {"max_error_rate": 0.05, "min_requests_per_check": 5, "confidence": 0.95,
                "outcomes": {"correct": {"max_decrease": 0.05, "min_labelled": 15}}}


@pytest.mark.timeout(150)
def test_an_equally_healthy_candidate_with_wrong_labels_is_rolled_back_by_the_outcome_gate(app):
    wait_for(lambda: helpers.phase(app) in helpers.TERMINAL | {None})
    with LabelledLoad(app, threads=2):
        admin_ok(app, "POST", "/admin/rollout/start",
                 {"spec": helpers.spec(app, thresholds=OUTCOME_GATE), "actor": "ci", "reason": "outcome gate"})
        wait_for(lambda: helpers.phase(app) in helpers.TERMINAL, timeout_s=120)
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "rolled_back", rollout["reason"]
    assert "candidate correct" in rollout["decision"]["reason"], rollout["decision"]["reason"]


@pytest.mark.timeout(150)
def test_the_candidate_loses_an_ab_test_on_the_labelled_outcome(app):
    wait_for(lambda: helpers.phase(app) in helpers.TERMINAL | {None})
    ab = {"metric": "correct", "test": "two_proportion", "min_samples": 30, "split": 50}
    with LabelledLoad(app, threads=2):
        admin_ok(app, "POST", "/admin/rollout/start", {"spec": helpers.spec(app, mode="ab", ab=ab), "actor": "ci"})
        wait_for(lambda: helpers.phase(app) in helpers.TERMINAL, timeout_s=120)
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "concluded", rollout["reason"]
    assert rollout["decision"]["outcome"] == "candidate_worse", rollout["reason"]
    assert rollout["decision"]["ab"]["n_candidate"] >= 30   # labelled requests, not served ones


REWARD_RATES = {BASELINE: 0.2, CANDIDATE: 0.6}


class RewardLoad(Load):
    """Predict traffic whose callers post a 0/1 reward (a conversion) after each answer: known rates per variant."""

    def _run(self, seed: int) -> None:
        rng, i = random.Random(seed), seed * 1000
        while not self._stop.is_set():
            i += 1
            try:
                r = self.app.predict([instance(i)])
                if r.status_code == 200:
                    body = r.json()
                    reward = float(rng.random() < REWARD_RATES[body["variant"]])
                    post_feedback(self.app, {"request_id": body["request_id"], "reward": reward})
            except Exception:
                continue


@pytest.mark.timeout(150)
def test_a_bandit_on_posted_rewards_promotes_the_better_version(app):
    """Last in the module: the winner becomes champion. Rewards reach the bandit only through :feedback."""
    wait_for(lambda: helpers.phase(app) in helpers.TERMINAL | {None})
    bandit = {"min_samples_per_arm": 20, "promote_threshold": 0.95, "min_share": 0.1}
    with RewardLoad(app, threads=2):
        admin_ok(app, "POST", "/admin/rollout/start",
                 {"spec": helpers.spec(app, mode="bandit", bandit=bandit), "actor": "ci", "reason": "bandit"})

        def decided() -> bool:
            return admin_ok(app, "GET", "/admin/rollout")["rollout"]["phase"] in helpers.TERMINAL

        wait_for(decided, timeout_s=120, every_s=0.5)
    rollout = admin_ok(app, "GET", "/admin/rollout")["rollout"]
    assert rollout["phase"] == "succeeded", rollout["reason"]
    # The bandit promoted it (its last update put the candidate's P(best) past the threshold). The shares a poll sees
    # end at the promotion's 1.0, so they cannot show the split following the rewards (max(shares) > 0.5 held
    # whatever happened); tests/rollout/test_controller_bandit.py checks that.
    assert rollout["bandit"]["prob_best"][CANDIDATE] >= bandit["promote_threshold"], rollout["bandit"]
    arms = rollout["bandit"]["arms"]   # rewards posted through :feedback, joined to the variant that served them
    assert min(arms[v]["n"] for v in (BASELINE, CANDIDATE)) >= 20, arms
    assert arms[CANDIDATE]["total"] / arms[CANDIDATE]["n"] > arms[BASELINE]["total"] / arms[BASELINE]["n"], arms
    assert helpers.champion_version(app) == app.versions[CANDIDATE]
