"""The generation deployment through the official ``openai`` client, over real Serve HTTP.

A tiny GPT-2 is trained in the test, registered in the session's MLflow server (``runs:/RUN/hf``) and
served from ``models:/NAME@champion``; nothing is mocked. Small limits (4 sequences decoding, 2
waiting) make overload reachable with a handful of streams.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import torch

from deployments.llm.openai_api import ChatRequest, CompletionRequest, OpenAIError, chat_prompt, parse
from tests.helm.metric_names import metric_names_in_expr
from tests.serve.helpers import wait_for
from tests.serve.llm_helpers import PROMPTS, TinyLM, build_tiny_lm, register_lm

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MAX_ACTIVE, MAX_WAITING = 4, 2
SPEC = TinyLM(context=2048)   # room for streams long enough (seconds) to still be decoding when the test acts
LONG = 1800                   # tokens of such a stream
LIMIT = 1900                  # the server's max_tokens limit


@dataclass
class LLMApp:
    name: str
    url: str
    model: str
    version: str
    folder: Path
    client: openai.OpenAI
    http: httpx.Client

    def stats(self) -> dict:
        return self.http.get(f"{self.url}/v1/engine/stats").json()

    def open_stream(self, max_tokens: int = LONG) -> httpx.Response:
        """A completion stream whose response has started (its slot is taken); the caller closes it."""
        request = self.http.build_request("POST", f"{self.url}/v1/completions", json={
            "model": self.model, "prompt": PROMPTS[0], "max_tokens": max_tokens, "temperature": 0, "stream": True})
        response = self.http.send(request, stream=True)
        assert response.status_code == 200, response.read()
        return response


@pytest.fixture(scope="module")
def llm(serve_url: str, settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMApp]:
    from ray import serve

    from deployments.llm.server import LLMServeConfig, build

    name = f"lm-{uuid.uuid4().hex[:6]}"
    folder = build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), SPEC)
    version = register_lm(settings, name, folder)
    app = f"llm-{uuid.uuid4().hex[:6]}"
    cfg = LLMServeConfig(model=f"models:/{name}@champion", tracking_uri=str(settings.mlflow_tracking_uri),
                         num_cpus=0.25, max_active=MAX_ACTIVE, max_waiting=MAX_WAITING, max_tokens_limit=LIMIT)
    serve.run(build(cfg), name=app, route_prefix=f"/{app}")
    url = f"{serve_url}/{app}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    http = httpx.Client(timeout=30)
    try:
        yield LLMApp(app, url, name, version, folder, client, http)
    finally:
        client.close()
        http.close()
        serve.delete(app)


@pytest.fixture(scope="module")
def reference(llm: LLMApp):
    """The same registered files loaded with plain ``transformers`` (what greedy output must equal)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(llm.folder).eval(), AutoTokenizer.from_pretrained(llm.folder)


def generate_greedy(reference, prompt: str, max_tokens: int) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) of ``transformers`` greedy ``generate``."""
    model, tokenizer = reference
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)[0, ids.shape[1]:]
    return tokenizer.decode(out, skip_special_tokens=True), ids.shape[1], len(out)


def test_greedy_completion_equals_transformers_generate_and_names_the_version(llm, reference):
    raw = llm.client.completions.with_raw_response.create(model=llm.model, prompt=PROMPTS[1], max_tokens=24,
                                                          temperature=0)
    completion = raw.parse()
    text, prompt_tokens, completion_tokens = generate_greedy(reference, PROMPTS[1], 24)
    assert completion.choices[0].text == text and text.strip()
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == completion_tokens
    assert completion.usage.total_tokens == prompt_tokens + completion_tokens
    assert raw.headers["x-rayline-version"] == llm.version
    assert completion.model_extra["rayline"]["version"] == llm.version


def test_streamed_completion_equals_the_whole_one_with_usage_last(llm, reference):
    chunks = list(llm.client.completions.create(model=llm.model, prompt=PROMPTS[2], max_tokens=20, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
    text, prompt_tokens, completion_tokens = generate_greedy(reference, PROMPTS[2], 20)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[0].model_extra["rayline"]["version"] == llm.version
    assert chunks[-2].choices[0].finish_reason == "length"
    assert not chunks[-1].choices
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (prompt_tokens, completion_tokens)


def test_chat_streamed_and_not_agree_and_use_the_plain_template(llm, reference):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    whole = llm.client.chat.completions.create(model=llm.model, messages=messages, max_tokens=16, temperature=0)
    chunks = list(llm.client.chat.completions.create(model=llm.model, messages=messages, max_tokens=16,
                                                     temperature=0, stream=True))
    plain = "system: be brief\nuser: the cat\nassistant:"
    text, prompt_tokens, _ = generate_greedy(reference, plain, 16)
    assert whole.choices[0].message.content == text
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == prompt_tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[0].model_extra["rayline"]["version"] == llm.version


def test_seeded_sampling_is_reproducible(llm):
    def sample(seed: int) -> str:
        return llm.client.completions.create(model=llm.model, prompt=PROMPTS[3], max_tokens=24, temperature=1.0,
                                             top_p=0.95, seed=seed).choices[0].text

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first


def test_stop_string_ends_the_completion(llm, reference):
    text, _, _ = generate_greedy(reference, PROMPTS[0], 24)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    completion = llm.client.completions.create(model=llm.model, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                               stop=["never", stop])
    assert completion.choices[0].text == text[:text.index(stop)]
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"prompt": "the cat " * 1200}, openai.BadRequestError, "prompt"),             # longer than the context
    ({"max_tokens": LIMIT + 1}, openai.BadRequestError, "max_tokens"),              # over the server's limit
    ({"prompt": "the cat " * 600, "max_tokens": LIMIT}, openai.BadRequestError, "max_tokens"),   # no room left
    ({"extra_body": {"frobnicate": True}}, openai.BadRequestError, "frobnicate"),  # unknown field
    ({"temperature": "hot"}, openai.BadRequestError, "temperature"),               # wrong type
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"model": "no-such-model"}, openai.NotFoundError, "model"),
])
def test_bad_input_is_an_openai_error_naming_the_field(llm, kwargs, error, param):
    args = {"model": llm.model, "prompt": PROMPTS[0], "max_tokens": 4, **kwargs}
    with pytest.raises(error) as raised:
        llm.client.completions.create(**args)
    assert raised.value.param == param
    assert set(raised.value.body) >= {"message", "type", "param", "code"}


# OpenAI's fields this server does not implement, at values that ask nothing of it, per endpoint.
COMPLETION_NEUTRAL = {"n": None, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": None, "echo": False,
                      "best_of": 1, "logit_bias": {}, "suffix": None}
CHAT_NEUTRAL = {"n": None, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": None,
                "logit_bias": {}, "response_format": {"type": "text"}, "parallel_tool_calls": False, "tools": [],
                "tool_choice": "none", "service_tier": "auto", "metadata": {"app": "test"}, "store": False}
ENDPOINTS = {False: (CompletionRequest, {"model": "m", "prompt": "x"}, COMPLETION_NEUTRAL),
             True: (ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, CHAT_NEUTRAL)}


@pytest.mark.parametrize(("chat", "field", "value"), [
    *[(False, f, v) for f, v in COMPLETION_NEUTRAL.items()],
    *[(True, f, v) for f, v in CHAT_NEUTRAL.items()],
    (False, "frequency_penalty", 0.0), (False, "best_of", None), (True, "presence_penalty", None),
    (True, "logprobs", None), (True, "top_logprobs", 0), (True, "tools", None), (True, "tool_choice", None),
    (True, "service_tier", "default"), (True, "parallel_tool_calls", True), (True, "response_format", None),
])
def test_an_openai_field_at_its_neutral_value_is_accepted_and_on_the_other_endpoint_stays_unknown(chat, field, value):
    """A no-op value of one of this endpoint's OpenAI fields parses; a field OpenAI gives only to the other endpoint
    is still an unknown parameter there (``echo`` is a completions field, ``tools`` a chat one)."""
    model, body, _ = ENDPOINTS[chat]
    assert getattr(parse(model, {**body, field: value}), field) == value
    other, other_body, other_fields = ENDPOINTS[not chat]
    if field not in other_fields:
        with pytest.raises(OpenAIError) as raised:
            parse(other, {**other_body, field: value})
        assert (raised.value.param, raised.value.code) == (field, "unknown_parameter")


@pytest.mark.parametrize("chat", [False, True])
def test_null_sampling_fields_mean_their_defaults(chat):
    """OpenAI allows null for ``temperature``, ``top_p`` and ``stream``: the default, not a type error."""
    model, body, _ = ENDPOINTS[chat]
    parsed = parse(model, {**body, "temperature": None, "top_p": None, "stream": None})
    assert (parsed.temperature, parsed.top_p, parsed.stream) == (1.0, 1.0, False)


def test_a_value_the_server_would_not_honour_says_so_naming_the_field():
    with pytest.raises(OpenAIError) as raised:
        parse(CompletionRequest, {**ENDPOINTS[False][1], "presence_penalty": 0.5})
    assert (raised.value.status, raised.value.param, raised.value.code) == (400, "presence_penalty",
                                                                            "unsupported_value")
    assert raised.value.message == "presence_penalty other than 0 is not supported by this server"


@pytest.mark.parametrize("field", ["reasoning_effort", "modalities", "audio", "prediction", "web_search_options",
                                   "verbosity", "prompt_cache_key", "safety_identifier"])
def test_an_openai_field_the_server_does_not_list_is_accepted_at_null_and_refused_otherwise(field):
    """OpenAI's fields come from the installed ``openai`` client's request types, so one this server does not list
    (or that OpenAI added later) is no ``unknown_parameter`` at null, and any value is ``unsupported_value``."""
    model, body, _ = ENDPOINTS[True]
    assert parse(model, {**body, field: None}).messages[0].content == "hi"
    with pytest.raises(OpenAIError) as raised:
        parse(model, {**body, field: "x"})
    assert (raised.value.status, raised.value.param, raised.value.code) == (400, field, "unsupported_value")
    assert raised.value.message.startswith(f"{field} is not supported by this server")
    with pytest.raises(OpenAIError) as raised:   # not a completions field in OpenAI's API either
        parse(CompletionRequest, {**ENDPOINTS[False][1], field: None})
    assert (raised.value.param, raised.value.code) == (field, "unknown_parameter")


def test_empty_content_and_a_stream_option_this_server_lacks_are_named():
    with pytest.raises(OpenAIError) as raised:
        parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": []}]})
    assert (raised.value.param, raised.value.code) == ("messages", "invalid_value")
    assert "at least one text part" in raised.value.message
    body = {**ENDPOINTS[False][1], "stream": True}
    for neutral in (None, False):
        assert parse(CompletionRequest, {**body, "stream_options": {"include_usage": True,
                                                                    "include_obfuscation": neutral}}).include_usage()
    with pytest.raises(OpenAIError) as raised:
        parse(CompletionRequest, {**body, "stream_options": {"include_obfuscation": True}})
    assert (raised.value.param, raised.value.code) == ("stream_options", "unsupported_value")
    assert raised.value.message == "stream_options.include_obfuscation other than false is not supported by this server"
    with pytest.raises(OpenAIError) as raised:   # not OpenAI's
        parse(CompletionRequest, {**body, "stream_options": {"include_everything": True}})
    assert (raised.value.param, raised.value.code) == ("stream_options", "unknown_parameter")


def test_an_answer_sent_back_as_history_and_text_parts_are_accepted():
    """Chat clients append OpenAI's answer object as it is dumped (``refusal``, ``tool_calls``... at null) and send
    content as text parts; the prompt is the same as with plain strings (parts joined with a newline, as vLLM)."""
    answer = openai.types.chat.ChatCompletionMessage(role="assistant", content="the dog", annotations=[]).model_dump()
    parts = [{"type": "text", "text": "the"}, {"type": "text", "text": "cat", "prompt_cache_breakpoint": None}]
    parsed = parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": parts}, answer]})
    plain = parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "the\ncat"},
                                                           {"role": "assistant", "content": "the dog"}]})
    assert chat_prompt(None, parsed.messages) == chat_prompt(None, plain.messages) == \
        "user: the\ncat\nassistant: the dog\nassistant:"


@pytest.mark.parametrize(("message", "says"), [
    ({"role": "assistant", "content": "x", "tool_calls": [{"id": "c1", "type": "function"}]},
     "messages.0.tool_calls is not supported by this server"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
     'messages.0.content part 0 ("image_url") is not supported by this server'),
    ({"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}]},
     'messages.0.content part 0: "cache_control" is not supported by this server'),
    ({"role": "user", "content": [{"type": "text", "text": "a", "prompt_cache_breakpoint": {"x": 1}}]},
     'messages.0.content part 0: "prompt_cache_breakpoint" is not supported by this server'),
])
def test_what_a_message_asks_that_the_server_cannot_do_is_refused_naming_it(message, says):
    with pytest.raises(OpenAIError) as raised:
        parse(ChatRequest, {"model": "m", "messages": [message]})
    assert (raised.value.status, raised.value.param, raised.value.code) == (400, "messages", "unsupported_value")
    assert raised.value.message.startswith(says)


def test_a_conversation_with_the_answer_sent_back_and_text_parts_through_the_client(llm):
    """The official client sends the answer object it got as history, and content parts: one more turn works."""
    first = llm.client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "the cat"}],
                                               max_tokens=6, temperature=0)
    history = [{"role": "user", "content": [{"type": "text", "text": "the cat"}]},
               first.choices[0].message.model_dump(), {"role": "user", "content": "and"}]
    again = llm.client.chat.completions.create(model=llm.model, messages=history, max_tokens=6, temperature=0)
    plain = llm.client.chat.completions.create(model=llm.model, max_tokens=6, temperature=0, messages=[
        {"role": "user", "content": "the cat"}, {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "and"}])
    assert again.choices[0].message.content == plain.choices[0].message.content
    assert again.usage.prompt_tokens == plain.usage.prompt_tokens > first.usage.prompt_tokens


def test_openai_fields_at_their_neutral_values_give_the_plain_greedy_text(llm):
    """What LangChain, LlamaIndex and SDK wrappers send (OpenAI's fields at their defaults) changes nothing."""
    plain = llm.client.completions.create(model=llm.model, prompt=PROMPTS[1], max_tokens=12, temperature=0)
    neutral = llm.client.completions.create(
        model=llm.model, prompt=PROMPTS[1], max_tokens=12, temperature=0, frequency_penalty=0, presence_penalty=0,
        logprobs=None, echo=False, best_of=1, logit_bias={}, suffix=None, n=None)
    assert neutral.choices[0].text == plain.choices[0].text
    messages = [{"role": "user", "content": "the cat"}]
    plain_chat = llm.client.chat.completions.create(model=llm.model, messages=messages, max_tokens=12, temperature=0)
    neutral_chat = llm.client.chat.completions.create(
        model=llm.model, messages=messages, max_tokens=12, temperature=0, frequency_penalty=0, presence_penalty=0,
        logprobs=False, top_logprobs=None, logit_bias={}, response_format={"type": "text"}, parallel_tool_calls=False,
        tools=[], tool_choice="none", service_tier="auto", metadata={"app": "test"}, store=False, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in neutral_chat) == plain_chat.choices[0].message.content


@pytest.mark.parametrize(("chat", "kwargs", "param"), [
    (False, {"frequency_penalty": -1}, "frequency_penalty"),
    (False, {"presence_penalty": 0.5}, "presence_penalty"),
    (False, {"logprobs": 0}, "logprobs"),           # 0 still returns the chosen tokens' log-probs
    (False, {"echo": True}, "echo"),
    (False, {"best_of": 2}, "best_of"),
    (False, {"logit_bias": {"50256": -100}}, "logit_bias"),
    (False, {"suffix": "!"}, "suffix"),
    (True, {"presence_penalty": 0.5}, "presence_penalty"),
    (True, {"logprobs": True}, "logprobs"),
    (True, {"top_logprobs": 2}, "top_logprobs"),
    (True, {"response_format": {"type": "json_object"}}, "response_format"),
    (True, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    (True, {"tool_choice": "required"}, "tool_choice"),
    (True, {"service_tier": "priority"}, "service_tier"),
    (True, {"store": True}, "store"),
])
def test_an_openai_field_the_server_would_not_honour_is_an_openai_error_naming_it(llm, chat, kwargs, param):
    with pytest.raises(openai.BadRequestError) as raised:
        if chat:
            llm.client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, **kwargs)
        else:
            llm.client.completions.create(model=llm.model, prompt=PROMPTS[0], max_tokens=4, **kwargs)
    assert (raised.value.param, raised.value.code) == (param, "unsupported_value")
    assert raised.value.message.endswith("is not supported by this server")


def test_a_request_arriving_mid_decode_joins_the_batch_and_finishes_first(llm):
    long = llm.open_stream()
    try:
        lines = long.iter_lines()   # one iterator only: dropping a started one closes the connection
        next(lines)
        started = time.monotonic()
        short = llm.client.completions.create(model=llm.model, prompt=PROMPTS[4], max_tokens=4, temperature=0)
        assert short.usage.completion_tokens == 4 and time.monotonic() - started < 10
        stats = llm.stats()
        assert stats["active"] >= 1   # the long one is still decoding after the short one finished
        assert stats["max_active_seen"] >= 2
        assert next(line for line in lines if line.startswith("data:"))
    finally:
        long.close()


def test_a_client_that_disconnects_frees_its_slot(llm):
    # An earlier test's closed stream is cancelled at the engine's next step: count from after it settled.
    wait_for(lambda: llm.stats()["active"] == 0, timeout_s=30, every_s=0.05)
    before = llm.stats()["cancelled"]
    stream = llm.open_stream()
    chunks = (line for line in stream.iter_lines() if line.startswith("data:"))
    next(chunks), next(chunks)
    stream.close()
    wait_for(lambda: llm.stats()["active"] == 0, timeout_s=30, every_s=0.05)   # cancelled or finished
    assert llm.stats()["cancelled"] == before + 1   # stopped, not run to max_tokens


def test_past_the_queue_limit_answers_429_with_retry_after(llm):
    holders = [llm.open_stream() for _ in range(MAX_ACTIVE + MAX_WAITING)]
    try:
        with pytest.raises(openai.RateLimitError) as raised:
            llm.client.completions.create(model=llm.model, prompt=PROMPTS[0], max_tokens=4)
        assert raised.value.status_code == 429
        assert int(raised.value.response.headers["retry-after"]) >= 1
        assert raised.value.code == "server_busy"
    finally:
        for holder in holders:
            holder.close()
    wait_for(lambda: llm.stats()["active"] == 0, timeout_s=10, every_s=0.05)


def test_models_lists_the_served_version(llm):
    listed = llm.client.models.list()
    assert [m.id for m in listed.data] == [llm.model]
    assert listed.data[0].model_extra["version"] == llm.version


def test_concurrent_streams_all_complete(llm, reference):
    """Four streams at once (the active limit) each get their own greedy text, not a neighbour's."""
    results: dict[str, str] = {}

    def run(prompt: str) -> None:
        chunks = llm.client.completions.create(model=llm.model, prompt=prompt, max_tokens=16, temperature=0,
                                               stream=True)
        results[prompt] = "".join(c.choices[0].text for c in chunks)

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS[:MAX_ACTIVE]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {p: generate_greedy(reference, p, 16)[0] for p in PROMPTS[:MAX_ACTIVE]}


def test_token_metrics_reach_rays_metrics_port(llm, ray_metrics_port):
    """TTFT, inter-token latency, tokens in/out and the mean log-prob, per model and version, as Prometheus
    scrapes them from Ray's metrics port: every name the shipped language-model Grafana dashboard queries."""
    llm.client.completions.create(model=llm.model, prompt=PROMPTS[5], max_tokens=8, temperature=0)
    with pytest.raises(openai.BadRequestError):
        llm.client.completions.create(model=llm.model, prompt=PROMPTS[5], max_tokens=8, n=2)
    dashboard = json.loads((ROOT / "helm" / "rayline" / "dashboards" / "llm.json").read_text())
    names = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in metric_names_in_expr(target["expr"])}
    assert len(names) >= 8 and all(name.startswith("ray_rayline_llm_") for name in names), names

    def exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{ray_metrics_port}/metrics", timeout=5).text
        mine = [line for line in text.splitlines() if f'model="{llm.model}"' in line and 'version="' in line]
        return all(any(line.startswith(name + "{") for line in mine) for name in names)

    wait_for(exported, timeout_s=30, every_s=1)


def test_a_deployment_handle_gets_what_http_gets(llm, reference):
    """The router's seam: ``respond`` through a handle streams the head, then the same body as over HTTP, then
    (a generation) the request's model metrics for the rollout windows."""
    from ray import serve

    handle = serve.get_app_handle(llm.name).options(stream=True)
    body = {"model": llm.model, "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0}
    head, whole, closing = list(handle.respond.remote("completion", body))
    assert head["status"] == 200 and head["headers"]["x-rayline-version"] == llm.version
    assert json.loads(whole)["choices"][0]["text"] == generate_greedy(reference, PROMPTS[1], 12)[0]
    assert closing["metrics"]["completion_tokens"] == 12 and closing["metrics"]["mean_logprob"] <= 0
    parts = list(handle.respond.remote("completion", {**body, "stream": True}))
    assert parts[0]["stream"] and parts[-2].endswith("data: [DONE]\n\n") and set(parts[-1]) == {"metrics"}
    bad_head, bad_body = list(handle.respond.remote("completion", {**body, "n": 3}))
    assert bad_head["status"] == 400 and json.loads(bad_body)["error"]["param"] == "n"
