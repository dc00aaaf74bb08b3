"""Language models through the router (``kind: llm``), with the official ``openai`` client, over real Serve HTTP.

A tiny GPT-2 is trained here and registered twice (v1 ``@champion``, v2 ``@challenger``); the app is
the same router as for tabular models, one ``LLMServer`` deployment per variant, with a static split
that the tests set through the admin API (no rollout controller). The same versions also run colocated
(``colocate: true``: both engines inside the router's replica, streamed in-process). Nothing is mocked
(the GPU option is checked as configuration only: there is no GPU here).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from scipy.stats import binomtest

from cluster.errors import ConfigError
from cluster.registry import Registry
from deployments.contracts import BASELINE, CANDIDATE, HEADER_FORCE, HEADER_STICKY, HEADER_VARIANT, HEADER_VERSION
from deployments.serve_config import parse_config
from tests.prometheus_text import sample_sum
from tests.serve.helpers import (
    TERMINAL,
    ServeApp,
    admin_ok,
    champion_version,
    phase,
    running_app,
    spec,
    wait_for,
    wait_for_traffic,
)
from tests.serve.llm_helpers import PROMPTS, TinyLM, build_tiny_lm, register_lm
from tests.serve.test_rollout import Load
from tests.serve.test_router import SPLIT_FALSE_FAILURE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SPEC = TinyLM(context=512)   # room for a stream long enough to see its first token arrive well before its end
FIGURES = {"dataset": "lm-test", "dataset_version": "v1", "val_loss": "2.5"}
SLOW_FIRST_TOKEN_S = 0.1     # the slow candidate's added wait: 3x and more the tiny model's TTFT here
LM_GATES = {"max_error_rate": 0.05, "min_requests_per_check": 5, "confidence": 0.95,
            "max_latency_ratio_vs_baseline": 2.0}   # latency: the router records TTFT for LM requests


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), SPEC)


def register_two(settings, folder: Path) -> str:
    """A new model: the tiny GPT as v1 @champion and again as v2 @challenger, both tagged with the same
    validation figures (what the rollout's quality gate reads); returns its name."""
    name = f"lm-{uuid.uuid4().hex[:6]}"
    registry = Registry(settings)
    for alias in ("champion", "challenger"):
        version = register_lm(settings, name, folder, alias=alias)
        for key, value in FIGURES.items():
            registry.set_version_tag(name, version, key, value)
    return name


@pytest.fixture(scope="module")
def lm_app(serve_url: str, settings, lm_folder: Path) -> Iterator[ServeApp]:
    """The router app over v1 (baseline) and v2 (candidate) of a tiny GPT, split 50/50 without a controller."""
    with running_app(serve_url, settings, register_two(settings, lm_folder), kind="llm", controller=False,
                     traffic={BASELINE: 0.5, CANDIDATE: 0.5}, llm={"max_active": 8}) as app:
        yield app


@pytest.fixture
def client(lm_app: ServeApp) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{lm_app.url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def lm_split(lm_app: ServeApp):
    """Set the app's split for one test (weights, shadow); 50/50 without shadow again after it."""

    def set_split(weights: dict[str, float], shadow: str | None = None) -> None:
        response = lm_app.admin("PUT", "/admin/traffic", {"weights": weights, "shadow": shadow})
        assert response.status_code == 200, response.text
        wait_for_traffic(lm_app, response.json()["epoch"])

    yield set_split
    set_split({BASELINE: 0.5, CANDIDATE: 0.5})


def forced(variant: str) -> dict[str, dict[str, str]]:
    return {"extra_headers": {HEADER_FORCE: variant}}


def test_completions_and_chat_streamed_and_not_name_variant_and_version(lm_app, client):
    for variant in (BASELINE, CANDIDATE):
        version = lm_app.versions[variant]
        raw = client.completions.with_raw_response.create(model=lm_app.model, prompt=PROMPTS[1], max_tokens=8,
                                                          temperature=0, **forced(variant))
        whole = raw.parse()
        assert (raw.headers[HEADER_VARIANT], raw.headers[HEADER_VERSION]) == (variant, version)
        assert whole.model_extra["rayline"] == {"model": lm_app.model, "version": version, "variant": variant}
        assert whole.usage.completion_tokens == 8

        raw = client.completions.with_raw_response.create(model=lm_app.model, prompt=PROMPTS[1], max_tokens=8,
                                                          temperature=0, stream=True, **forced(variant))
        assert (raw.headers[HEADER_VARIANT], raw.headers[HEADER_VERSION]) == (variant, version)
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
        assert chunks[0].model_extra["rayline"]["version"] == version
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text   # same model, greedy

        messages = [{"role": "user", "content": "the cat"}]
        raw = client.chat.completions.with_raw_response.create(model=lm_app.model, messages=messages, max_tokens=6,
                                                               temperature=0, **forced(variant))
        chat = raw.parse()
        assert raw.headers[HEADER_VERSION] == version and chat.choices[0].message.role == "assistant"
        streamed = list(client.chat.completions.create(model=lm_app.model, messages=messages, max_tokens=6,
                                                       temperature=0, stream=True, **forced(variant)))
        assert streamed[0].model_extra["rayline"]["variant"] == variant
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content


def test_an_unknown_forced_variant_or_a_bad_field_is_an_openai_error_naming_it(lm_app, client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.completions.create(model=lm_app.model, prompt=PROMPTS[0], max_tokens=2, **forced("nope"))
    assert raised.value.param == HEADER_FORCE
    with pytest.raises(openai.BadRequestError) as bad:   # the variant's own validation, passed through
        client.completions.create(model=lm_app.model, prompt=PROMPTS[0], max_tokens=2, extra_body={"frob": 1})
    assert bad.value.param == "frob"
    assert bad.value.response.headers[HEADER_VARIANT] in (BASELINE, CANDIDATE)


def test_the_user_field_and_the_sticky_header_keep_a_user_on_one_variant_and_the_split_uses_both(lm_app, client):
    users = [f"user-{i}" for i in range(16)]

    def variant_of(user: str, by_header: bool = False) -> str:
        args = {"extra_headers": {HEADER_STICKY: user}} if by_header else {"user": user}
        raw = client.completions.with_raw_response.create(model=lm_app.model, prompt=PROMPTS[0], max_tokens=1,
                                                          **args)
        return raw.headers[HEADER_VARIANT]

    first = {u: variant_of(u) for u in users}
    assert all(variant_of(u) == first[u] for u in users[:8])
    assert all(variant_of(u, by_header=True) == first[u] for u in users[:4])   # one key, however it comes
    assert set(first.values()) == {BASELINE, CANDIDATE}
    unkeyed = {client.completions.with_raw_response.create(model=lm_app.model, prompt=PROMPTS[0],
                                                          max_tokens=1).headers[HEADER_VARIANT] for _ in range(16)}
    assert unkeyed == {BASELINE, CANDIDATE}


def test_a_stream_is_relayed_as_it_is_generated_not_buffered(lm_app):
    """The first event reaches the client through the router long before the last token is generated."""
    body = {"model": lm_app.model, "prompt": PROMPTS[2], "max_tokens": 400, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    with lm_app.client.stream("POST", f"{lm_app.url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        next(events)
        first_s = time.perf_counter() - started
        rest = list(events)
    total_s = time.perf_counter() - started
    assert rest[-1] == "data: [DONE]" and '"completion_tokens":400' in rest[-2].replace(" ", "")
    assert first_s < total_s / 3, (first_s, total_s)


def test_a_client_that_leaves_a_routed_stream_stops_its_generation(lm_app):
    """The router passes the disconnect on: the variant's engine drops the sequence (``cancelled``), no slot held."""
    from ray import serve

    engine = serve.get_deployment_handle(f"llm-{CANDIDATE}", lm_app.name).engine_stats
    before = engine.remote().result()["cancelled"]
    body = {"model": lm_app.model, "prompt": PROMPTS[0], "max_tokens": 480, "temperature": 0, "stream": True}
    with lm_app.client.stream("POST", f"{lm_app.url}/v1/completions", json=body,
                              headers={HEADER_FORCE: CANDIDATE}) as response:
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        next(events), next(events)
    wait_for(lambda: engine.remote().result()["active"] == 0, timeout_s=30, every_s=0.05)   # cancelled or finished
    assert engine.remote().result()["cancelled"] == before + 1   # stopped, not run to max_tokens


def test_shadow_copies_are_generated_and_recorded_but_never_answer(lm_app, client, lm_split):
    lm_split({BASELINE: 1.0}, shadow=CANDIDATE)
    for i in range(6):
        raw = client.completions.with_raw_response.create(model=lm_app.model, prompt=PROMPTS[i], max_tokens=4,
                                                          stream=i % 2 == 0)
        assert raw.headers[HEADER_VARIANT] == BASELINE

    def shadowed() -> dict | None:
        windows = admin_ok(lm_app, "GET", "/admin/rollout")["windows"]
        shadow = windows.get(f"{CANDIDATE}/shadow")
        return shadow if shadow and shadow["requests"] >= 6 else None

    shadow = wait_for(shadowed, timeout_s=20)
    assert shadow["version"] == lm_app.versions[CANDIDATE] and shadow["errors_5xx"] == 0


def recorded_latency(app: ServeApp, variant: str) -> tuple[float, float]:
    """(requests, seconds) the router has recorded as ``variant``'s latency: its latency histogram's count and sum."""
    text = app.client.get(f"{app.url}/metrics").text
    return (sample_sum(text, "rayline_serve_request_latency_seconds_count", variant=variant),
            sample_sum(text, "rayline_serve_request_latency_seconds_sum", variant=variant))


def test_windows_record_each_request_with_its_time_to_first_token_as_latency(lm_app):
    """What the rollout controller gates on: per-variant counts and latency = TTFT (not the stream's length).

    The router records a request once, with one latency, into its window and its latency histogram; the histogram's
    sum moved by this stream alone is that latency exactly (the windows give only percentiles over every request of
    the last minute). The router's clock runs from its receiving the request to its first token, inside the client's
    wait for the first event, so it can be no longer than that wait, however loaded the machine; the stream's length
    (the client reads 300 tokens after the first) is far longer.
    """
    body = {"model": lm_app.model, "prompt": PROMPTS[3], "max_tokens": 300, "temperature": 0, "stream": True}
    headers = {HEADER_FORCE: CANDIDATE, HEADER_STICKY: f"ttft-{uuid.uuid4().hex[:6]}"}
    before = admin_ok(lm_app, "GET", "/admin/rollout")["windows"].get(CANDIDATE, {}).get("requests", 0)
    count_before, seconds_before = recorded_latency(lm_app, CANDIDATE)
    started = time.perf_counter()
    with httpx.stream("POST", f"{lm_app.url}/v1/completions", json=body, headers=headers, timeout=30) as response:
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        next(events)
        first_event_ms = (time.perf_counter() - started) * 1000
        assert sum(1 for _ in events) > 2

    def recorded() -> dict | None:
        window = admin_ok(lm_app, "GET", "/admin/rollout")["windows"].get(CANDIDATE, {})
        return window if window.get("requests", 0) > before else None

    window = wait_for(recorded, timeout_s=10)
    assert window["version"] == lm_app.versions[CANDIDATE]
    count, seconds = wait_for(lambda: (r := recorded_latency(lm_app, CANDIDATE))[0] > count_before and r, timeout_s=10)
    assert count == count_before + 1
    recorded_ms = (seconds - seconds_before) * 1000
    assert 0 < recorded_ms <= first_event_ms, (recorded_ms, first_event_ms)   # its first token, not its 300th


def test_models_lists_the_model_and_the_version_of_each_variant(lm_app, client):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [lm_app.model]
    assert listed.data[0].model_extra["versions"] == lm_app.versions


# ---- colocated (``colocate: true``): every variant's engine inside the router's replica, the same router code ----

@pytest.fixture(scope="module")
def colocated_lm(serve_url: str, settings, lm_app: ServeApp) -> Iterator[ServeApp]:
    """The same two versions, loaded inside the router's one replica (no ``llm-*`` deployments), split 70/30."""
    with running_app(serve_url, settings, lm_app.model, app_name=f"{lm_app.name}-colocated", kind="llm",
                     controller=False, colocate=True, traffic={BASELINE: 0.7, CANDIDATE: 0.3},
                     llm={"max_active": 8}) as app:
        yield app


# The colocated 70/30 split, checked by a two-sided binomial test over COLOCATED_DRAWS unkeyed requests (the first
# COLOCATED_STREAMED streamed): 65..128 on the candidate pass, so correct code fails it with probability 8.9e-5;
# a router that ignored the weights (50/50) passes it with probability 2.1e-4, i.e. fails it 99.98 % of the time.
# (It was 64 streamed draws asserting only baseline > candidate: a 50/50 split passed that 45 % of the time.)
COLOCATED_DRAWS = 320
COLOCATED_STREAMED = 64


def colocated_engine(app: ServeApp, variant: str) -> dict:
    """``variant``'s engine stats, read from the router replica that runs it (the app has one)."""
    from ray import serve

    return serve.get_deployment_handle("router", app.name).engine_stats.remote(variant).result()


def test_a_colocated_router_streams_both_variants_by_weight_and_names_variant_and_version(colocated_lm):
    from ray import serve

    deployments = set(serve.status().applications[colocated_lm.name].deployments)
    assert "router" in deployments and not any(d.startswith("llm-") for d in deployments), deployments   # one hop
    versions = colocated_lm.versions
    with openai.OpenAI(base_url=f"{colocated_lm.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        served = []
        for i in range(COLOCATED_STREAMED):
            raw = client.completions.with_raw_response.create(model=colocated_lm.model, prompt=PROMPTS[i % 6],
                                                              max_tokens=3, temperature=0, stream=True)
            variant = raw.headers[HEADER_VARIANT]
            assert raw.headers[HEADER_VERSION] == versions[variant]
            chunks = list(raw.parse())
            assert chunks[0].model_extra["rayline"] == {"model": colocated_lm.model,
                                                        "version": versions[variant], "variant": variant}
            assert "".join(c.choices[0].text for c in chunks)
            served.append(variant)
        assert set(served) == {BASELINE, CANDIDATE}

        def draw(i: int) -> str:   # the rest of the split's draws: whole one-token answers, 8 at a time
            raw = client.completions.with_raw_response.create(model=colocated_lm.model, prompt=PROMPTS[i % 6],
                                                              max_tokens=1, temperature=0)
            assert raw.headers[HEADER_VERSION] == versions[raw.headers[HEADER_VARIANT]]
            return raw.headers[HEADER_VARIANT]

        with ThreadPoolExecutor(8) as pool:
            served += pool.map(draw, range(COLOCATED_DRAWS - COLOCATED_STREAMED))
    on_candidate = served.count(CANDIDATE)
    assert binomtest(on_candidate, COLOCATED_DRAWS, 0.3).pvalue > SPLIT_FALSE_FAILURE, on_candidate   # 65..128 pass


def test_a_client_that_leaves_a_colocated_stream_stops_its_in_process_generation(colocated_lm):
    before = colocated_engine(colocated_lm, CANDIDATE)["cancelled"]
    body = {"model": colocated_lm.model, "prompt": PROMPTS[0], "max_tokens": 480, "temperature": 0, "stream": True}
    with colocated_lm.client.stream("POST", f"{colocated_lm.url}/v1/completions", json=body,
                                    headers={HEADER_FORCE: CANDIDATE}) as response:
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        next(events), next(events)
    wait_for(lambda: colocated_engine(colocated_lm, CANDIDATE)["active"] == 0, timeout_s=30, every_s=0.05)
    assert colocated_engine(colocated_lm, CANDIDATE)["cancelled"] == before + 1   # stopped, not run to max_tokens


def test_a_colocated_router_generates_shadow_copies_in_process(colocated_lm):
    response = colocated_lm.admin("PUT", "/admin/traffic", {"weights": {BASELINE: 1.0}, "shadow": CANDIDATE})
    wait_for_traffic(colocated_lm, response.json()["epoch"])
    with openai.OpenAI(base_url=f"{colocated_lm.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        for i in range(4):
            raw = client.completions.with_raw_response.create(model=colocated_lm.model, prompt=PROMPTS[i],
                                                              max_tokens=4, stream=i % 2 == 0)
            assert raw.headers[HEADER_VARIANT] == BASELINE

    def shadowed() -> dict | None:
        shadow = admin_ok(colocated_lm, "GET", "/admin/rollout")["windows"].get(f"{CANDIDATE}/shadow")
        return shadow if shadow and shadow["requests"] >= 4 else None

    shadow = wait_for(shadowed, timeout_s=20)
    assert shadow["version"] == colocated_lm.versions[CANDIDATE] and shadow["errors_5xx"] == 0


# ---- the GPU option of the variants (configuration only: no GPU here) -------------------------------------------

def test_llm_num_gpus_goes_to_the_variant_replicas_or_colocated_to_the_router_and_runs_the_engine_on_cuda():
    from deployments.app import llm_server, router_sizing

    args = {"model_name": "m", "kind": "llm", "baseline": "models:/m@champion", "llm": {"num_gpus": 0.5}}
    variant = llm_server(parse_config(args), BASELINE, "3", "http://mlflow")._bound_deployment
    assert variant.ray_actor_options["num_gpus"] == 0.5 and variant.init_kwargs["device"] == "cuda"
    assert "num_gpus" not in router_sizing(parse_config(args))["ray_actor_options"]   # the router itself: CPU only
    colocated = router_sizing(parse_config({**args, "colocate": True}))
    assert colocated["ray_actor_options"]["num_gpus"] == 0.5
    on_cpu = llm_server(parse_config({**args, "llm": {}}), BASELINE, "3", "http://mlflow")._bound_deployment
    assert "num_gpus" not in on_cpu.ray_actor_options and "device" not in on_cpu.init_kwargs
    for bad, field in (({**args, "llm": {"num_gpus": 2}}, "llm.num_gpus"),
                       ({**args, "kind": "tabular"}, "llm.num_gpus is for kind: llm")):
        with pytest.raises(ConfigError, match=field):
            parse_config(bad)


def test_llm_engine_process_reaches_every_variant_server_default_on():
    """``llm.engine_process``: the decode loop in a child process (default) or, false, in a thread of the replica."""
    from deployments.app import llm_args, llm_server

    args = {"model_name": "m", "kind": "llm", "baseline": "models:/m@champion"}
    assert llm_server(parse_config(args), BASELINE, "3", "http://mlflow")._bound_deployment.init_kwargs[
        "engine_process"] is True
    in_thread = parse_config({**args, "llm": {"engine_process": False}, "colocate": True})
    assert llm_args(in_thread, BASELINE, "3", "http://mlflow")["engine_process"] is False


# ---- canary rollouts of language models: the same controller, gating on TTFT ------------------------------------

class CompletionLoad(Load):
    """Streamed completions from a few threads (each user sticky); every response's variant and status kept."""

    def send(self, i: int) -> httpx.Response:
        body = {"model": self.app.model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 2, "stream": True,
                "user": f"user-{i % 50}"}
        with self.app.client.stream("POST", f"{self.app.url}/v1/completions", json=body) as response:
            response.read()
        return response


def canary(app: ServeApp) -> dict:
    """Run a 50/100 % canary of challenger over champion under load to its end; the final rollout status."""
    with CompletionLoad(app) as load:
        admin_ok(app, "POST", "/admin/rollout/start", {
            "spec": spec(app, steps=[50, 100], thresholds=LM_GATES, quality={"metric": "val_loss"}), "actor": "ci"})
        wait_for(lambda: phase(app) in TERMINAL, timeout_s=60, every_s=0.25)
    assert any(v == CANDIDATE and code == 200 for _, v, code in load.served), "the candidate served traffic"
    return admin_ok(app, "GET", "/admin/rollout")["rollout"]


def test_a_candidate_with_a_slow_first_token_is_rolled_back_automatically(serve_url, settings, lm_folder):
    """The candidate's first token comes ``SLOW_FIRST_TOKEN_S`` late (an explicit fault option of the app)."""
    with running_app(serve_url, settings, register_two(settings, lm_folder), kind="llm",
                     llm={"first_token_delay_s": {CANDIDATE: SLOW_FIRST_TOKEN_S}}) as app:
        rollout = canary(app)
    assert rollout["phase"] == "rolled_back", rollout
    assert "latency" in rollout["decision"]["reason"] and rollout["decision"]["actor"] == "controller"
    assert champion_version(app) == app.versions[BASELINE]


def test_a_healthy_candidate_is_promoted_and_the_champion_alias_moves(serve_url, settings, lm_folder):
    """Colocated: the controller moves the weights of engines that run inside the router's replica. The separate
    topology's promotion (router replica → variant deployments) is the demo's language-model canary
    (``tests/e2e/test_demo.py``), and this module's rollback test runs on it."""
    with running_app(serve_url, settings, register_two(settings, lm_folder), kind="llm", colocate=True) as app:
        rollout = canary(app)
    assert rollout["phase"] == "succeeded", rollout
    assert champion_version(app) == app.versions[CANDIDATE]
