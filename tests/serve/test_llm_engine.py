"""The continuous-batching engine and the OpenAI request parsing, without Ray or Serve.

The model is a real ``transformers`` GPT-2 (random weights, wide initialisation so greedy decoding
varies); the tokenizer is a stand-in that spells ids as letters (the engine only calls ``decode``).
"""

from __future__ import annotations

import pytest
import torch

from deployments.llm import cpu_attention
from deployments.llm.engine import (
    SPARE_COLUMNS,
    Engine,
    EngineFailed,
    EngineFull,
    Event,
    SamplingParams,
    adaptive_interval,
)
from deployments.llm.loader import hf_dir
from deployments.llm.openai_api import ChatRequest, CompletionRequest, OpenAIError, parse

pytestmark = pytest.mark.timeout(120)


class Letters:
    """Decodes id ``i`` as one letter (``a`` + i mod 26); no end-of-sequence token."""

    eos_token_id = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=300, initializer_range=0.5)
    return GPT2LMHeadModel(config).eval()


def greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def drain(engine: Engine) -> None:
    while engine._active or engine._waiting:
        engine.step()


def test_sequences_joining_a_running_batch_decode_exactly_as_generate_alone(model):
    """Six prompts of different lengths, each submitted one step after the previous: every completion
    equals ``transformers`` greedy ``generate`` on that prompt alone, and the batch held them together."""
    engine = Engine(model, Letters(), max_active=8)
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [20], [30, 31, 32, 33], [40, 41], [7] * 20]
    seqs = []
    for i, prompt in enumerate(prompts):
        seqs.append(engine.submit(prompt, SamplingParams(max_tokens=8 + 3 * i, temperature=0), lambda e: None))
        engine.step()
    drain(engine)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.generated == greedy(model, prompt, seq.params.max_tokens)
        assert seq.finish_reason == "length"
    assert engine.stats.max_active_seen == len(prompts)


def test_cancel_frees_the_slot_at_the_next_step(model):
    engine = Engine(model, Letters(), max_active=2)
    events: list[Event] = []
    long = engine.submit([1, 2], SamplingParams(max_tokens=100, temperature=0), events.append)
    other = engine.submit([3], SamplingParams(max_tokens=100, temperature=0), lambda e: None)
    engine.step()
    engine.step()
    engine.cancel(long)
    engine.step()
    assert engine.stats.active == 1 and engine._active == [other]
    assert engine.stats.cancelled == 1
    assert events[-1].finish_reason == "cancelled" and len(long.generated) < 100


def test_past_active_and_waiting_limits_submit_is_refused_with_a_retry_hint(model):
    engine = Engine(model, Letters(), max_active=1, max_waiting=1, retry_after_s=3)
    params = SamplingParams(max_tokens=5, temperature=0)
    engine.submit([1], params, lambda e: None)
    engine.step()
    engine.submit([2], params, lambda e: None)
    with pytest.raises(EngineFull) as full:
        engine.submit([3], params, lambda e: None)
    assert full.value.retry_after_s == 3


def test_seeded_sampling_repeats_and_top_p_near_zero_is_greedy(model):
    def sample(seed: int, top_p: float = 1.0) -> list[int]:
        engine = Engine(model, Letters())
        seq = engine.submit([4, 5], SamplingParams(max_tokens=12, temperature=1.0, top_p=top_p, seed=seed),
                            lambda e: None)
        drain(engine)
        return seq.generated

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7, top_p=1e-6) == greedy(model, [4, 5], 12)


def test_stop_string_ends_the_sequence_and_is_not_emitted(model):
    text = Letters().decode(greedy(model, [9, 9], 20))
    stop = text[5:7]
    events: list[Event] = []
    engine = Engine(model, Letters())
    engine.submit([9, 9], SamplingParams(max_tokens=20, temperature=0, stop=(stop,)), events.append)
    drain(engine)
    emitted = "".join(e.text for e in events)
    assert emitted == text[:text.find(stop)]
    assert events[-1].finish_reason == "stop"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "prompt": "x", "n": 2}, "n"),
    ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "m", "prompt": "x", "logprobs": 2}, "logprobs"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_completion_fields_are_named(body, param):
    with pytest.raises(OpenAIError) as err:
        parse(CompletionRequest, body)
    assert err.value.status == 400 and err.value.param == param


def test_bad_chat_message_role_is_named():
    with pytest.raises(OpenAIError) as err:
        parse(ChatRequest, {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]})
    assert err.value.param == "messages"


def test_hf_folder_is_found_at_the_artifact_root_or_under_hf(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "b" / "hf").mkdir(parents=True)
    (tmp_path / "b" / "hf" / "config.json").write_text("{}")
    assert hf_dir(tmp_path / "a") == tmp_path / "a"
    assert hf_dir(tmp_path / "b") == tmp_path / "b" / "hf"
    from cluster.errors import RegistryError

    with pytest.raises(RegistryError):
        hf_dir(tmp_path)


def test_stream_interval_sends_the_first_token_at_once_then_every_n_tokens_and_loses_no_text(model):
    """``stream_interval`` 4 (fewer Serve items per token): the first event carries one token, the middle ones
    four, the last one the rest; the text and log-prob sum are those of the token-by-token stream."""
    def run(interval: int) -> list[Event]:
        events: list[Event] = []
        engine = Engine(model, Letters(), stream_interval=interval)
        engine.submit([3, 4], SamplingParams(max_tokens=14, temperature=0), events.append)
        drain(engine)
        return events

    each, grouped = run(1), run(4)
    assert [e.tokens for e in each] == list(range(1, 15))
    assert [e.tokens for e in grouped] == [1, 5, 9, 13, 14]
    assert "".join(e.text for e in grouped) == "".join(e.text for e in each)
    assert grouped[-1].finish_reason == "length"
    assert grouped[-1].logprob_sum == pytest.approx(each[-1].logprob_sum)


def test_default_stream_interval_adapts_to_the_batch_and_an_explicit_1_streams_every_token(model):
    """The default (``stream_interval`` None): a sequence decoding alone streams every token; sixteen decoding
    together send the first token at once, then one event per 8 tokens, the last at once (about two Serve items
    per step for the batch, not sixteen); ``stream_interval=1`` keeps every token its own event at any batch.
    Text, token counts and log-prob sums are the token-by-token stream's."""
    def run(interval: int | None, batch: int) -> list[list[Event]]:
        engine = Engine(model, Letters(), max_active=16, stream_interval=interval)
        streams: list[list[Event]] = [[] for _ in range(batch)]
        for i, events in enumerate(streams):
            engine.submit([3 + i, 4], SamplingParams(max_tokens=20, temperature=0), events.append)
        drain(engine)
        return streams

    assert [adaptive_interval(b) for b in (1, 2, 3, 4, 8, 16, 32)] == [1, 1, 2, 2, 4, 8, 8]
    alone, = run(None, 1)
    assert [e.tokens for e in alone] == list(range(1, 21))
    adaptive, every = run(None, 16), run(1, 16)
    for grouped, each in zip(adaptive, every, strict=True):
        assert [e.tokens for e in grouped] == [1, 9, 17, 20]
        assert [e.tokens for e in each] == list(range(1, 21))
        assert "".join(e.text for e in grouped) == "".join(e.text for e in each)
        assert grouped[-1].finish_reason == each[-1].finish_reason == "length"
        assert grouped[-1].logprob_sum == pytest.approx(each[-1].logprob_sum)


def test_a_sequence_outgrowing_the_caches_spare_columns_while_rows_join_and_leave_decodes_as_generate(model):
    """The batch cache writes each token into spare columns and grows by ``SPARE_COLUMNS`` when full: a long
    sequence crosses that boundary while shorter ones join (left-padded merge), finish (rows dropped) and the
    longest prompt's padding is trimmed; every completion still equals ``generate`` alone."""
    engine = Engine(model, Letters(), max_active=4)
    prompts = [[1, 2, 3], [9] * 12, [4, 5], [6, 7, 8, 9, 10]]
    lengths = [SPARE_COLUMNS + 30, 10, 40, 25]
    seqs = []
    for prompt, max_tokens in zip(prompts, lengths, strict=True):
        seqs.append(engine.submit(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), lambda e: None))
        for _ in range(5):
            engine.step()
    drain(engine)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.generated == greedy(model, prompt, seq.params.max_tokens)


def test_half_precision_on_cpu_keeps_a_float32_cache_and_decodes_as_generate_with_the_same_attention(model):
    """bfloat16 weights on CPU: the engine switches the model to ``cpu_attention`` (torch's bfloat16 CPU attention
    kernels are slow for a decode step's one query row) and keeps the batch's KV cache in float32; six staggered
    prompts (rows joining, left-padded, leaving) each equal ``generate`` alone on that model, token for token. A
    float32 model keeps ``sdpa``."""
    import copy

    assert Engine(model, Letters()).cache_dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    half = copy.deepcopy(model).to(torch.bfloat16)
    engine = Engine(half, Letters(), max_active=8)
    assert half.config._attn_implementation == cpu_attention.NAME and engine.cache_dtype == torch.float32
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [20], [30, 31, 32, 33], [40, 41], [7] * 20]
    seqs = []
    for i, prompt in enumerate(prompts):
        seqs.append(engine.submit(prompt, SamplingParams(max_tokens=8 + 3 * i, temperature=0), lambda e: None))
        engine.step()
        assert all(layer.keys.dtype == torch.float32 for layer in engine._cache.layers)
    drain(engine)
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.generated == greedy(half, prompt, seq.params.max_tokens)
    assert engine.stats.max_active_seen == len(prompts)


@pytest.mark.parametrize("kv_heads, value_dims, scaling", [(4, 16, 0.3), (2, 16, None), (2, 8, 0.3)])
def test_cpu_attention_computes_sdpa_in_float32_for_decode_steps_and_prompts(kv_heads, value_dims, scaling):
    """``cpu_attention.attention`` against ``scaled_dot_product_attention`` in float64 on the same inputs: one query
    row per sequence with left padding masked (the decode step) or no mask, grouped key/value heads, a value head
    size other than the query's, the default scaling; a causal prompt and an additive float mask (through ``sdpa``).
    On float32 inputs it agrees to float32's rounding (it computes in float32); on bfloat16 ones the output comes
    back in bfloat16."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    class Module(torch.nn.Module):
        is_causal = True
        num_key_value_groups = 4 // kv_heads

    torch.manual_seed(0)
    batch, columns, dims, groups = 3, 9, 16, 4 // kv_heads
    key = torch.randn(batch, kv_heads, columns, dims)
    value = torch.randn(batch, kv_heads, columns, value_dims)
    pads = (torch.arange(columns) >= torch.tensor([[0], [3], [8]]))[:, None, None, :]   # pads 0, 3, 8
    additive = torch.zeros(pads.shape, dtype=torch.bfloat16).masked_fill(~pads, float("-inf"))

    def check(query: torch.Tensor, mask: torch.Tensor | None, tolerance: float, **kw) -> None:
        out, _ = cpu_attention.attention(Module(), query, key.to(query.dtype), value.to(query.dtype), mask,
                                         scaling=scaling, **kw)
        want = sdpa(query.double(), key.double().repeat_interleave(groups, 1),
                    value.double().repeat_interleave(groups, 1),
                    attn_mask=mask if mask is None or mask.dtype == torch.bool else mask.double(),
                    scale=scaling, is_causal=mask is None and query.shape[2] > 1).transpose(1, 2)
        assert out.dtype == query.dtype and out.shape == (batch, query.shape[2], 4, value_dims)
        torch.testing.assert_close(out.double(), want, atol=tolerance, rtol=tolerance)

    step = torch.randn(batch, 4, 1, dims)
    for mask in (pads, None, additive):
        check(step, mask, 1e-5)
        check(step.to(torch.bfloat16), mask, 2e-2)
    check(torch.randn(batch, 4, columns, dims).to(torch.bfloat16), None, 2e-2)   # a prompt, causal


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the replica without CUDA")
def test_device_cuda_without_a_gpu_fails_the_replica_at_construction_naming_the_field():
    """Checked before the model is resolved: no registry, no Ray needed (this machine has no CUDA)."""
    from cluster.errors import ConfigError
    from deployments.llm.server import LLMModel, LLMServeConfig

    with pytest.raises(ConfigError) as err:
        LLMModel("models:/lm@champion", device="cuda")
    assert str(err.value).startswith("device: 'cuda'") and "\n" not in str(err.value)
    assert LLMServeConfig(model="models:/lm@champion", num_gpus=1).num_gpus == 1


def test_a_forward_pass_that_raises_ends_every_sequence_with_an_error_and_the_engine_refuses_new_ones(model):
    """A device error or out-of-memory in the decode loop (here: a forward pass made to raise on its fourth call,
    standing in for a GPU fault this machine cannot produce) must not leave callers waiting for tokens: every
    admitted sequence ends with ``finish_reason`` "error" at once, new ones are refused, and ``alive`` (what
    the replica's health check reads) turns false so Serve replaces the replica."""
    import threading

    engine = Engine(model, Letters(), max_active=1, max_waiting=4)
    calls, forward = [0], model.forward

    def failing_forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return forward(*args, **kwargs)

    ended = threading.Event()
    events: dict[int, list[Event]] = {0: [], 1: []}

    def collect(i: int):
        def emit(event: Event) -> None:
            events[i].append(event)
            if all(e and e[-1].finish_reason for e in events.values()):
                ended.set()
        return emit

    model.forward = failing_forward
    try:
        engine.submit([1, 2], SamplingParams(max_tokens=50, temperature=0), collect(0))
        engine.submit([3], SamplingParams(max_tokens=50, temperature=0), collect(1))   # waits for the one slot
        engine.start()
        assert ended.wait(30), "callers were left waiting after the decode loop failed"
    finally:
        model.forward = forward
    assert [e[-1].finish_reason for e in events.values()] == ["error", "error"]
    assert not engine.alive and "illegal memory access" in engine.failure
    with pytest.raises(EngineFailed, match="illegal memory access"):
        engine.submit([4], SamplingParams(max_tokens=5, temperature=0), lambda e: None)


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    from tests.serve.llm_helpers import TinyLM, build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("lm"), TinyLM(steps=2, context=512))


def test_the_engine_in_a_child_process_generates_as_generate_cancels_and_ends_with_its_replica(lm_folder):
    """``EngineProcess`` (the replica's default): completions submitted together equal ``generate`` alone, a
    cancelled one ends "cancelled" and is counted, ``stop`` ends the child; a child that dies ends every
    stream with "error" and refuses new ones (the replica's health check reads ``alive``)."""
    import os
    import signal
    import threading

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deployments.llm.engine_process import EngineProcess

    lm, tokenizer = AutoModelForCausalLM.from_pretrained(lm_folder).eval(), AutoTokenizer.from_pretrained(lm_folder)
    finished = threading.Semaphore(0)
    texts: dict[int, list[str]] = {}

    def emit(event: Event, i: int = -1) -> None:
        texts.setdefault(i, []).append(event.text)
        if event.finish_reason:
            finished.release()

    engine = EngineProcess(lm_folder, "cpu", 1, max_active=4, max_waiting=0, retry_after_s=1, stream_interval=None)
    try:
        prompts = [[5, 6, 7], [9], [11, 12, 13, 14, 15]]
        seqs = [engine.submit(p, SamplingParams(max_tokens=12, temperature=0), lambda e, i=i: emit(e, i))
                for i, p in enumerate(prompts)]
        long = engine.submit([3, 4], SamplingParams(max_tokens=400, temperature=0), emit)
        with pytest.raises(EngineFull):
            engine.submit([1], SamplingParams(max_tokens=1, temperature=0), emit)
        for _ in prompts:
            assert finished.acquire(timeout=30)
        engine.cancel(long)
        assert finished.acquire(timeout=10) and long.finish_reason == "cancelled"
        for i, (prompt, seq) in enumerate(zip(prompts, seqs, strict=True)):
            want = greedy(lm, prompt, 12)
            assert "".join(texts[i]) == tokenizer.decode(want, skip_special_tokens=True)
            assert seq.tokens == len(want) and seq.finish_reason in ("length", "stop")
        assert engine.stats.cancelled == 1 and engine.stats.active == 0
        last = engine.submit([8, 9], SamplingParams(max_tokens=400, temperature=0), emit)
        os.kill(engine._proc.pid, signal.SIGKILL)
        assert finished.acquire(timeout=10) and last.finish_reason == "error"
        assert not engine.alive
        with pytest.raises(EngineFailed):
            engine.submit([1], SamplingParams(max_tokens=1, temperature=0), emit)
    finally:
        engine.stop()
    assert engine._proc.poll() is not None


def test_dtype_bfloat16_runs_the_child_in_bfloat16_as_generate_does_and_an_unknown_dtype_is_named(lm_folder,
                                                                                                   tmp_path):
    """``dtype: bfloat16`` (the throughput setting on CPUs with AVX512-BF16 and on GPUs) reaches the engine's child:
    it reports bfloat16 weights and a lone greedy completion equals ``generate`` on the bfloat16 model (with the
    engine's float32 CPU attention), token for token; ``auto`` (the default) keeps a checkpoint's own dtype, float32
    or bfloat16; an unknown dtype is a ConfigError naming the field before any process starts."""
    import threading

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.errors import ConfigError
    from deployments.llm.engine_process import EngineProcess
    from deployments.llm.loader import check_dtype, from_folder

    with pytest.raises(ConfigError, match="dtype: 'int8' is not one of auto, float32, bfloat16, float16"):
        check_dtype("int8")
    lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    lm.save_pretrained(tmp_path / "bf16")
    tokenizer.save_pretrained(tmp_path / "bf16")
    assert cpu_attention.use(lm)                                  # the reference computes attention as the engine
    assert from_folder(lm_folder)[0].dtype == torch.float32
    assert from_folder(tmp_path / "bf16")[0].dtype == torch.bfloat16                       # auto: as saved
    assert from_folder(tmp_path / "bf16", dtype="float32")[0].dtype == torch.float32
    engine = EngineProcess(lm_folder, "cpu", 1, max_active=4, max_waiting=4, retry_after_s=1, stream_interval=None,
                           dtype="bfloat16")
    try:
        assert engine.dtype == "bfloat16"
        for prompt in ([5, 6, 7], [11, 12, 13, 14, 15]):
            done, texts = threading.Event(), []

            def emit(event: Event, done: threading.Event = done, texts: list[str] = texts) -> None:
                texts.append(event.text)
                if event.finish_reason:
                    done.set()

            seq = engine.submit(prompt, SamplingParams(max_tokens=16, temperature=0), emit)
            assert done.wait(30)
            want = greedy(lm, prompt, 16)
            assert "".join(texts) == tokenizer.decode(want, skip_special_tokens=True) and seq.tokens == len(want)
    finally:
        engine.stop()
