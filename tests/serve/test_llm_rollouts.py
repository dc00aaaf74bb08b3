"""Rollouts between two versions of a language model, gated on a model metric: the mean log-probability per
generated token that each variant reports to the router's windows.

Real parts throughout: a tiny GPT-2 trained here (``llm_helpers``), registered in the session's MLflow
server; the router app with ``kind: llm`` and its rollout controller on the session's Ray/Serve; load from
the official ``openai`` client (completions and chat, streamed and not, a ``user`` per caller).

The "bad" version is the same architecture and tokenizer with its weights left at their random
initialisation, registered with the same validation figures as the trained one: an artifact mix-up the
registry's figures cannot see. It answers as fast and without errors; only its log-probabilities show it
(greedy decoding: about -1.2 nats per token for the trained model, -5 for the untrained one).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from cluster.registry import Registry
from deployments.contracts import BASELINE, CANDIDATE, HEADER_VARIANT
from deployments.llm.relay import MEAN_LOGPROB
from tests.serve.helpers import TERMINAL, ServeApp, admin_ok, champion_version, phase, running_app, spec, wait_for
from tests.serve.llm_helpers import PROMPTS, TinyLM, build_tiny_lm, register_lm
from tests.serve.test_rollout import Load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SPEC = TinyLM()
FIGURES = {"dataset": "lm-test", "dataset_version": "v1", "val_loss": "2.5"}   # what the quality gate reads
GUARDS = {"max_error_rate": 0.05, "min_requests_per_check": 5, "confidence": 0.95,
          "max_latency_ratio_vs_baseline": 2.0}   # TTFT and errors: a bad-weights candidate passes these
LOGPROB_FLOOR = -3.0   # nats per token: between the trained model's ~-1.2 and the untrained one's ~-5 (greedy)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny GPT trained, and the same model untrained (one tokenizer: same seed and text)."""
    root = tmp_path_factory.mktemp("tiny-lms")
    return {"trained": build_tiny_lm(root / "trained", SPEC),
            "untrained": build_tiny_lm(root / "untrained", replace(SPEC, steps=0))}


def register(settings, champion: Path, challenger: Path) -> str:
    """A new model with ``champion`` as v1 and ``challenger`` as v2, both tagged with the same figures."""
    name = f"lm-{uuid.uuid4().hex[:6]}"
    registry = Registry(settings)
    for alias, folder in (("champion", champion), ("challenger", challenger)):
        version = register_lm(settings, name, folder, alias=alias)
        for key, value in FIGURES.items():
            registry.set_version_tag(name, version, key, value)
    return name


@pytest.fixture(scope="module")
def worse_app(serve_url: str, settings, folders: dict[str, Path]) -> Iterator[ServeApp]:
    """v1 trained @champion, v2 untrained @challenger, behind the router and its controller."""
    name = register(settings, folders["trained"], folders["untrained"])
    with running_app(serve_url, settings, name, kind="llm", llm={"max_active": 8}) as app:
        yield app


class OpenAILoad(Load):
    """The official ``openai`` client from a few threads: completions and chat, streamed and not, greedy, each
    request from one of 40 users (OpenAI's ``user`` field, the sticky key); (sent, answered, user, variant) of each
    answer."""

    def __init__(self, app: ServeApp, threads: int = 2) -> None:
        super().__init__(app, threads)
        self.client = openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0, timeout=30)
        self.answers: list[tuple[float, float, str, str]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def send(self, i: int) -> Any:
        user, prompt, stream, sent = f"user-{i % 40}", PROMPTS[i % len(PROMPTS)], i % 2 == 0, time.time()
        args: dict[str, Any] = {"model": self.app.model, "max_tokens": 4, "temperature": 0, "user": user,
                                "stream": stream}
        try:
            if i % 4 < 2:
                raw = self.client.completions.with_raw_response.create(prompt=prompt, **args)
            else:
                raw = self.client.chat.completions.with_raw_response.create(
                    messages=[{"role": "user", "content": prompt}], **args)
            parsed = raw.parse()
            if stream:
                list(parsed)
        except openai.APIError as exc:
            with self._lock:
                self.failures.append(repr(exc))
            raise
        with self._lock:
            self.answers.append((sent, time.time(), user, raw.headers[HEADER_VARIANT]))
        return raw

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.client.close()

    def variants_by_user(self, start: float, end: float) -> dict[str, set[str]]:
        """The variants that answered each user among requests sent after ``start`` and answered before ``end``."""
        by_user: dict[str, set[str]] = {}
        for sent, answered, user, variant in self.answers:
            if start <= sent and answered <= end:
                by_user.setdefault(user, set()).add(variant)
        return by_user


def run_rollout(app: ServeApp, rollout_spec: dict[str, Any], load: OpenAILoad, timeout_s: float = 90) -> dict:
    """Start ``rollout_spec`` under ``load`` and wait for its end; the final rollout status."""
    wait_for(lambda: phase(app) in TERMINAL | {None})
    admin_ok(app, "POST", "/admin/rollout/start", {"spec": rollout_spec, "actor": "ci"})
    wait_for(lambda: phase(app) in TERMINAL, timeout_s=timeout_s, every_s=0.25)
    return admin_ok(app, "GET", "/admin/rollout")["rollout"]


def timeline(app: ServeApp, rollout: dict) -> list[dict]:
    return admin_ok(app, "POST", "/admin/rollout/report", {"rollout_id": rollout["rollout_id"]})["timeline"]


def events(app: ServeApp) -> list[dict]:
    """The last rollout's state changes (``at``, ``from``, ``to``, ``weights``, ...)."""
    return admin_ok(app, "GET", "/admin/rollout/history")["rollouts"][-1]["events"]


def left(phase_name: str, app: ServeApp) -> float:
    """When the last rollout left ``phase_name`` (controller clock, epoch seconds)."""
    return next(e["at"] for e in events(app) if e["from"] == phase_name and e["to"] != phase_name)


def test_an_ab_test_on_mean_logprob_keeps_each_user_on_one_version_and_concludes_the_candidate_worse(worse_app):
    """Fixed 50/50 split, sticky by ``user``; Welch's test on the per-request mean log-prob decides."""
    app = worse_app
    ab = {"split": 50, "metric": MEAN_LOGPROB, "test": "welch", "higher_is_better": True, "min_samples": 40,
          "promote_on_win": True}
    with OpenAILoad(app) as load:
        rollout = run_rollout(app, spec(app, mode="ab", ab=ab, thresholds=GUARDS, quality={"metric": "val_loss"}),
                              load)
    assert rollout["phase"] == "concluded", rollout
    decision = rollout["decision"]
    assert decision["outcome"] == "candidate_worse" and decision["ab"]["effect"] < -1, decision
    assert min(decision["ab"]["n_baseline"], decision["ab"]["n_candidate"]) >= 40
    assert rollout["traffic"]["weights"] == {BASELINE: 1.0}
    assert champion_version(app) == app.versions[BASELINE]
    assert not load.failures, load.failures[:3]
    # while the split stood: one variant per user. Only the split sends anything to the candidate (baseline alone
    # before it and after the conclusion), so the router was on it from the first candidate answer to the last
    # candidate request: the requests sent after the one and answered before the other were routed on the split,
    # however late the router's poll (every TRAFFIC_POLL_S) took up each change on a loaded machine.
    on_candidate = [(sent, answered) for sent, answered, _, variant in load.answers if variant == CANDIDATE]
    assert on_candidate, "the candidate served traffic"
    by_user = load.variants_by_user(min(a for _, a in on_candidate), max(s for s, _ in on_candidate))
    assert len(by_user) >= 10 and all(len(variants) == 1 for variants in by_user.values()), by_user
    assert {v for variants in by_user.values() for v in variants} == {BASELINE, CANDIDATE}


def test_a_canary_of_a_version_with_untrained_weights_is_rolled_back_by_the_logprob_gate(worse_app):
    """Its TTFT and error rate pass their gates; the candidate's mean log-prob is below the spec's floor."""
    app = worse_app
    gates = {**GUARDS, "model_metrics": {MEAN_LOGPROB: {"min": LOGPROB_FLOOR}}}
    with OpenAILoad(app) as load:
        rollout = run_rollout(app, spec(app, steps=[50, 100], thresholds=gates, quality={"metric": "val_loss"}),
                              load)
    reason = rollout["decision"]["reason"]
    assert rollout["phase"] == "rolled_back", rollout
    assert f"candidate {MEAN_LOGPROB}" in reason and f"< {LOGPROB_FLOOR:g}" in reason, reason
    assert "latency" not in reason and "error" not in reason, reason
    assert not load.failures, load.failures[:3]
    assert any(v == CANDIDATE and code == 200 for _, v, code in load.served), "the candidate served traffic"
    judged = [p["variants"][CANDIDATE]["model_metrics"] for p in timeline(app, rollout) if CANDIDATE in p["variants"]]
    assert judged and max(m[MEAN_LOGPROB] for m in judged if m) < LOGPROB_FLOOR
    assert champion_version(app) == app.versions[BASELINE]


def test_a_shadow_rollout_judges_the_candidate_on_mirrored_generations_then_promotes_it(serve_url, settings,
                                                                                         folders):
    """Callers get only the baseline's answers while the candidate's mirrored copies fill its windows (log-prob
    judged against the baseline's on the same requests); it then goes through a one-step canary and is
    promoted: ``champion`` moves to it."""
    name = register(settings, folders["trained"], folders["trained"])
    gates = {**GUARDS, "model_metrics": {MEAN_LOGPROB: {"min": LOGPROB_FLOOR, "max_decrease_vs_baseline": 0.5}}}
    with running_app(serve_url, settings, name, kind="llm", llm={"max_active": 8}) as app:
        shadow_spec = spec(app, mode="shadow", shadow={"passing_checks": 2, "then": "canary"}, steps=[100],
                           thresholds=gates, quality={"metric": "val_loss"})
        with OpenAILoad(app) as load:
            rollout = run_rollout(app, shadow_spec, load)
        canary_at = left("shadowing", app)
        points = timeline(app, rollout)
    assert rollout["phase"] == "succeeded", rollout
    assert champion_version(app) == app.versions[CANDIDATE]
    during_shadow = [v for sent, v, _ in load.served if sent < canary_at - 1.0]
    assert len(during_shadow) >= 15 and set(during_shadow) == {BASELINE}, "a caller got the candidate in shadow"
    mirrored = [p["variants"][CANDIDATE] for p in points if p["phase"] == "shadowing" and CANDIDATE in p["variants"]]
    assert mirrored and all(MEAN_LOGPROB in m["model_metrics"] for m in mirrored if m["requests"])
    assert not load.failures, load.failures[:3]
