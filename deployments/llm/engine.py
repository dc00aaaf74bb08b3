"""Continuous batching for a causal LM on CPU: one decode loop steps every active sequence together.

``transformers`` does the model work (the forward pass, its ``DynamicCache`` KV cache, whose layers
here keep spare columns, and the cache's ``batch_select_indices`` to drop finished rows). What it
does not do for a server, this module does: admit requests that arrive while others decode into
the *running* batch at the next step, per-request sampling (temperature, top-p, its own seeded
generator), stop strings, incremental detokenization, cancellation within one step, and admission
limits.

Why not transformers' own ``ContinuousBatchingManager`` (``generate_batch``)? It runs on CPU here,
but sampling settings belong to the manager (one ``GenerationConfig``), not to each request, so a
per-request ``seed``/``temperature``/``top_p`` is not expressible; it returns no log-probabilities
(the rollout gate's model metric); and its paged cache's first requests waited > 5 s on 2 cores
(tried with transformers 5.23.0). Its cancel and streaming APIs would have fitted.

How rows of different lengths share one cache: the batch's cache is left-padded. Each sequence
has ``pad`` columns of zeros on the left that the attention mask hides, and passes its own
``position_ids``, so a sequence computes exactly what it would alone. A prefill of newcomers
(itself one left-padded forward) is merged by padding the shorter of the two caches on the left
and concatenating along the batch; when the longest row leaves, columns that are padding in
every row are cut off.

The loop runs in one thread per replica (``start``); callers ``submit`` from any thread and get
:class:`Event` s through their ``emit`` callback (called on the loop's thread).

Streaming cost: every event becomes one item through Serve (replica → proxy) and one write to the
client, about a millisecond of CPU per item on 2 cores, more than a decode step spends per row. So,
like vLLM's ``stream_interval``, an event carries up to ``stream_interval`` tokens: the first token
and the last event of a sequence go out at once, the tokens between are sent every
``stream_interval`` tokens. 1 sends every token. ``None`` (the default) adapts it to the batch each
step (:func:`adaptive_interval`): every token its own event while few sequences decode, up to
``MAX_AUTO_INTERVAL`` tokens per event under load, so the whole batch sends about
``ITEMS_PER_STEP`` items per decode step.

Per step the engine hands the model what it would otherwise rebuild: the decode's 4-D attention mask
(``transformers`` returns a 4-D mask as given instead of expanding the 2-D one every forward), and a
KV cache whose layers (:class:`SpareLayer`) write each new token into spare columns instead of
``DynamicLayer``'s ``torch.cat`` copy of the whole cache every token.

Weights in bfloat16 or float16 on CPU: the engine switches the model's attention to
:mod:`deployments.llm.cpu_attention` and keeps the batch's cache in float32 (``cache_dtype``): torch's half-precision
CPU attention kernels are slow for a decode step's one query row (half of a bfloat16 step's time went there).

The replica runs this engine in a child process (``deployments.llm.engine_process``), so that Serve's
threads do not hold the GIL the loop needs.

Every tensor is made on the model's device (CPU here; ``cuda`` where the replica has a GPU).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from deployments.llm import cpu_attention

HOLD = "\ufffd"  # what a byte-level tokenizer decodes an incomplete UTF-8 sequence to: wait for the next token
ITEMS_PER_STEP = 2       # adaptive streaming: streamed items per decode step the whole batch aims at
MAX_AUTO_INTERVAL = 8    # adaptive streaming: at most this many tokens per event (8 at a batch of 16)
SPARE_COLUMNS = 64       # cache columns allocated ahead, so a decode step writes in place


def adaptive_interval(batch: int) -> int:
    """Tokens per event when ``stream_interval`` is None: ``ceil(batch / ITEMS_PER_STEP)``, 1 to ``MAX_AUTO_INTERVAL``.

    Each event is one Serve item, about 1 ms of CPU on 2 cores: alone (or two together) a sequence streams every
    token; 16 decoding together send one event per 8 tokens each, about two items per step instead of 16."""
    return max(1, min(MAX_AUTO_INTERVAL, -(-batch // ITEMS_PER_STEP)))


class EngineFailed(Exception):
    """The decode loop died (a forward pass raised: out of memory, a device error): this replica cannot generate."""


class EngineFull(Exception):
    """Active slots and the waiting queue are both full: the caller should retry later."""

    def __init__(self, admitted: int, max_active: int, max_waiting: int, retry_after_s: int) -> None:
        super().__init__(f"server busy: {admitted} requests admitted, the limit is {max_active} decoding + "
                         f"{max_waiting} waiting; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SamplingParams:
    """Per request: ``temperature`` 0 is greedy (argmax); ``seed`` makes sampling reproducible."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    """New text for one sequence; ``finish_reason`` set on its last event ("stop", "length", "cancelled")."""

    text: str
    tokens: int                      # completion tokens generated so far
    finish_reason: str | None = None
    logprob_sum: float = 0.0         # of the generated tokens under the model (temperature 1), so far
    at: float = field(default_factory=time.monotonic)   # when the engine emitted it


@dataclass(eq=False)
class Seq:
    """One request's state in the engine (identity-compared)."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    generated: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    sent_chars: int = 0                 # of the decoded text already emitted
    sent_tokens: int = 0                # tokens generated when the last event went out
    pad: int = 0                        # left padding columns in the batch cache
    cancelled: bool = False
    finish_reason: str | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    generator: torch.Generator | None = None

    @property
    def tokens(self) -> int:
        """Completion tokens generated so far."""
        return len(self.generated)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.generated)


@dataclass
class EngineStats:
    active: int = 0
    waiting: int = 0
    max_active_seen: int = 0
    steps: int = 0
    finished: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Engine:
    """The batching/generation loop over one ``transformers`` causal LM and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, max_active: int = 16, max_waiting: int = 64,
                 retry_after_s: int = 1, stream_interval: int | None = None) -> None:
        """``stream_interval``: tokens per event after the first; None adapts it to the batch (see the module)."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")   # what the weights are, as loaded
        cpu_attention.use(model)          # half precision on CPU: float32 cache and attention (see that module)
        self.cache_dtype = cpu_attention.cache_dtype(model)
        self.stream_interval = None if stream_interval is None else max(1, stream_interval)
        self._interval = self.stream_interval or 1     # this step's tokens per event
        self._mask_4d = getattr(model.config, "_attn_implementation", None) in ("sdpa", cpu_attention.NAME)
        self.tokenizer = tokenizer
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.context = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
        self.eos_id: int | None = eos
        self.stats = EngineStats()
        self._waiting: deque[Seq] = deque()
        self._active: list[Seq] = []
        self._cache: Any = None          # DynamicCache of the active rows, left-padded
        self._wake = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._after_step: Callable[[], None] | None = None
        self.failure: str | None = None   # why the decode loop died, once it has

    # ---- the callers' side (any thread) ----------------------------------------------------------

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Callable[[Event], None]) -> Seq:
        """Queue a sequence; it joins the running batch at the next step. EngineFull past the limits."""
        if self.failure is not None:
            raise EngineFailed(f"the decode loop of this replica stopped: {self.failure}")
        seq = Seq(list(prompt_ids), params, emit)
        if params.temperature > 0:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        with self._wake:
            if len(self._active) + len(self._waiting) >= self.max_active + self.max_waiting:
                raise EngineFull(len(self._active) + len(self._waiting), self.max_active, self.max_waiting,
                                 self.retry_after_s)
            self._waiting.append(seq)
            self.stats.waiting = len(self._waiting)
            self._wake.notify()
        return seq

    def cancel(self, seq: Seq) -> None:
        """Stop ``seq``: it leaves the batch (its slot freed) before the next decode step."""
        with self._wake:
            seq.cancelled = True
            self._wake.notify()

    def start(self, after_step: Callable[[], None] | None = None) -> None:
        """Run the loop in a thread; ``after_step`` is called on it after every step (and after a failure)."""
        self._after_step = after_step
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The decode loop runs (or was never started, as in tests that step by hand) and has not failed."""
        return self.failure is None and (self._thread is None or self._thread.is_alive() or self._stopped)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopped:
                    return
            try:
                self.step()
            except Exception as exc:   # any failure of a forward pass ends every sequence
                self.fail(exc)
                return
            finally:
                if self._after_step is not None:
                    self._after_step()

    def fail(self, exc: BaseException) -> None:
        """End every admitted sequence with ``finish_reason`` "error" and refuse new ones: a caller's stream ends
        at once instead of waiting for tokens that will never come; the replica's health check then fails."""
        with self._wake:
            self.failure = f"{type(exc).__name__}: {exc}"
            self._stopped = True
            for seq in [*self._active, *self._waiting]:
                seq.finish_reason = "error"
                seq.emit(Event("", len(seq.generated), "error", seq.logprob_sum))
            self._active.clear()
            self._waiting.clear()
            self._cache = None
            self.stats.active = self.stats.waiting = 0

    @torch.inference_mode()
    def step(self) -> None:
        """One scheduling step: drop cancelled rows, prefill newcomers into the batch, decode one token for all."""
        with self._wake:
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                self._finish(seq, "cancelled")
            self._drop([s for s in self._active if s.cancelled], "cancelled")
            room = self.max_active - len(self._active)
            newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self._interval = self.stream_interval or adaptive_interval(len(self._active) + len(newcomers))
        if self._active:
            self._decode(self._active)
        if newcomers:
            self._prefill(newcomers)
        with self._wake:
            self._drop([s for s in self._active if s.finish_reason is not None], None)
            self.stats.steps += 1
            self.stats.active = len(self._active)
            self.stats.waiting = len(self._waiting)
            self.stats.max_active_seen = max(self.stats.max_active_seen, len(self._active))

    def _prefill(self, seqs: list[Seq]) -> None:
        """One left-padded forward over the newcomers' prompts; their first token; their cache merged in."""
        longest = max(len(s.prompt_ids) for s in seqs)
        rows_ids, rows_mask = [], []
        for seq in seqs:
            seq.pad = longest - len(seq.prompt_ids)
            rows_ids.append([0] * seq.pad + seq.prompt_ids)
            rows_mask.append([0] * seq.pad + [1] * len(seq.prompt_ids))
        ids = torch.tensor(rows_ids, device=self.device)
        mask = torch.tensor(rows_mask, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        self._merge(seqs, out.past_key_values)
        self._sample(seqs, out.logits[:, -1, :])

    def _decode(self, seqs: list[Seq]) -> None:
        """One token for every active sequence: one forward of the whole batch over its cache."""
        columns = torch.arange(self._cache.get_seq_length() + 1, device=self.device)
        pads = torch.tensor([[s.pad] for s in seqs], device=self.device)
        mask = columns >= pads
        # sdpa: the (batch, 1, 1, columns) boolean mask transformers would build from the 2-D one, built here once
        mask = mask[:, None, None, :] if self._mask_4d else mask.long()
        last = torch.tensor([[s.generated[-1]] for s in seqs], device=self.device)
        positions = torch.tensor([[s.length - 1] for s in seqs], device=self.device)
        out = self.model(input_ids=last, attention_mask=mask, position_ids=positions, past_key_values=self._cache,
                         use_cache=True)
        self._cache = out.past_key_values
        self._sample(seqs, out.logits[:, -1, :])

    def _sample(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        tokens = logprobs.argmax(dim=-1)
        for row, seq in enumerate(seqs):
            if seq.params.temperature > 0:
                tokens[row] = _draw(logits[row], seq.params, seq.generator)
        chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()   # one device → host copy per step
        for seq, token, logprob in zip(seqs, tokens.tolist(), chosen, strict=True):
            seq.generated.append(token)
            seq.logprob_sum += logprob
            self._emit_new_text(seq, token)

    def _emit_new_text(self, seq: Seq, token: int) -> None:
        """Decode the whole completion again (short texts), emit what is new; stop strings end it.

        Between the first event and the last, text waits for this step's interval of tokens (see the module);
        without stop strings the decode itself waits too (nothing can end the sequence in the text)."""
        finish = None
        if self.eos_id is not None and token == self.eos_id:
            finish = "stop"
        elif len(seq.generated) >= seq.params.max_tokens or seq.length >= self.context:
            finish = "length"
        due = seq.sent_tokens == 0 or len(seq.generated) - seq.sent_tokens >= self._interval
        if finish is None and not due and not seq.params.stop:
            return
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        cut = _first_stop(text, seq.params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        if finish is None:
            text = text[:len(text) - _held_back(text, seq.params.stop)]
        new = text[seq.sent_chars:]
        if finish is None and (not due or not new or new.endswith(HOLD)):
            return
        seq.sent_chars, seq.sent_tokens = len(text), len(seq.generated)
        seq.finish_reason = finish
        seq.emit(Event(new, len(seq.generated), finish, seq.logprob_sum))

    # ---- the batch's cache ---------------------------------------------------------------------------

    def _merge(self, seqs: list[Seq], cache: Any) -> None:
        """Append the newcomers' rows to the batch cache, left-padding the shorter of the two."""
        if not self._active:
            self._cache, self._active = _cache_of(_layers(cache), self.cache_dtype), list(seqs)
            return
        old, new = self._cache.get_seq_length(), cache.get_seq_length()
        width = max(old, new)
        for seq in self._active:
            seq.pad += width - old
        for seq in seqs:
            seq.pad += width - new
        self._cache = _concat(self._cache, width - old, cache, width - new, self.cache_dtype)
        self._active.extend(seqs)

    def _drop(self, leaving: list[Seq], reason: str | None) -> None:
        """Remove rows from the batch (the cache's own ``batch_select_indices``), trim shared padding."""
        if not leaving:
            return
        keep = [i for i, s in enumerate(self._active) if s not in leaving]
        for seq in leaving:
            self._finish(seq, reason or seq.finish_reason or "stop")
        self._active = [self._active[i] for i in keep]
        if not self._active:
            self._cache = None
            return
        self._cache.batch_select_indices(torch.tensor(keep, device=self.device))
        trim = min(s.pad for s in self._active)
        if trim:
            self._cache = _trim_left(self._cache, trim)
            for seq in self._active:
                seq.pad -= trim

    def _finish(self, seq: Seq, reason: str) -> None:
        if reason == "cancelled":
            self.stats.cancelled += 1
            seq.finish_reason = reason
            seq.emit(Event("", len(seq.generated), reason, seq.logprob_sum))
        else:
            self.stats.finished += 1


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from ``softmax(logits / temperature)`` restricted to the top-p nucleus."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > params.top_p   # keep the smallest prefix reaching top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop string (not streamed until resolved)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class SpareLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into storage with spare columns on the right.

    ``DynamicLayer.update`` concatenates: every decode step copies the whole cache (every row, every column).
    Here a step writes its one column in place; storage grows by ``SPARE_COLUMNS`` (one copy) when full.
    ``StaticLayer`` would preallocate too, but returns its full ``max_cache_len`` columns to attention every
    step (the context, 512 here, not the ~80 in use) and writes at one ``cache_position`` the left-padded rows
    would have to share. The rest (lengths, masks' sizes) is ``DynamicLayer``'s, reading the views."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, dtype: torch.dtype) -> None:
        """``dtype``: the storage's (the engine's ``cache_dtype``, float32 under :mod:`cpu_attention`): each
        update's keys and values are converted on the copy into it."""
        super().__init__()
        self.dtype, self.device, self.is_initialized = dtype, keys.device, True
        self._store(keys, values, keys.shape[-2])

    def _store(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        batch, heads, _, dims = keys.shape
        shape = (batch, heads, length + SPARE_COLUMNS, dims)
        self._keys, self._values = keys.new_empty(shape, dtype=self.dtype), values.new_empty(shape, dtype=self.dtype)
        self._keys[:, :, :length] = keys[:, :, :length]
        self._values[:, :, :length] = values[:, :, :length]
        self._view(length)

    def _view(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self._keys.narrow(2, 0, length), self._values.narrow(2, 0, length)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        added = key_states.shape[-2]
        if self.length + added > self._keys.shape[-2]:
            self._store(self.keys, self.values, self.length)
        self._keys.narrow(2, self.length, added).copy_(key_states)
        self._values.narrow(2, self.length, added).copy_(value_states)
        self._view(self.length + added)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._view(self.length)

    def trim_left(self, columns: int) -> None:
        """Forget the first ``columns`` columns (padding in every row): a view, no copy."""
        self._keys, self._values = self._keys[:, :, columns:], self._values[:, :, columns:]
        self._view(self.length - columns)


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> Any:
    cache = DynamicCache()
    cache.layers = [SpareLayer(k, v, dtype) for k, v in layers]
    return cache


def _trim_left(cache: Any, columns: int) -> Any:
    """The cache without its first ``columns`` columns (padding in every row)."""
    for layer in cache.layers:
        layer.trim_left(columns)
    return cache


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, 0, columns, 0)) if columns else tensor


def _concat(first: Any, first_pad: int, second: Any, second_pad: int, dtype: torch.dtype) -> Any:
    """One cache of ``first``'s rows then ``second``'s, each left-padded by its count, stored in ``dtype``."""
    def rows(a: torch.Tensor, a_pad: int, b: torch.Tensor, b_pad: int) -> torch.Tensor:
        return torch.cat([_pad_left(a.to(dtype), a_pad), _pad_left(b.to(dtype), b_pad)])

    return _cache_of([(rows(k1, first_pad, k2, second_pad), rows(v1, first_pad, v2, second_pad))
                      for (k1, v1), (k2, v2) in zip(_layers(first), _layers(second), strict=True)], dtype)
