"""Attention for half-precision weights on CPU: a float32 KV cache and plain float32 decode attention.

Why: torch 2.13's CPU kernels for ``scaled_dot_product_attention`` are slow in bfloat16 for one query row per
sequence, the decode step's shape. At batch 16, 4 heads of 64, 61-91 cache columns, one call took 450-580 µs in
bfloat16 against 80-120 µs in float32 (flash kernel, warm caches; 2 AMD EPYC cores with AVX512-BF16, 2026-12-01),
so in a bfloat16 decode step attention was half the time while the linear layers, where bfloat16 pays, were a
third. The cache's keys and values are what the half-precision linear layers produced; held in float32 they are
the same numbers, and attention over them runs in float32: a decode step in float32 with a plain
matmul-softmax-matmul (217 µs per call with cold caches against 275 for the float32 flash kernel and 516 for the
bfloat16 one), a prefill through ``sdpa`` in float32. The engine closed-loop (16 clients, 64 tokens, staggered
arrivals) ran 1.19x (+18.6 %) faster than with ``sdpa`` in bfloat16 (paired median of 5 rounds, 2026-12-01).
The price is the cache's memory, twice bfloat16's.

It is registered with ``transformers``' ``AttentionInterface`` under :data:`NAME` and selected per model
(:func:`use`), so the model's own attention module calls it; float32 models and GPUs keep ``sdpa``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "rayline_cpu_float32"
HALF = (torch.bfloat16, torch.float16)
UNHANDLED = ("position_bias", "softcap", "s_aux", "sinks")   # model extras the plain decode path does not compute

logger = logging.getLogger(__name__)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any
              ) -> tuple[torch.Tensor, None]:
    """``transformers``' attention signature: float32 attention, the output back in the query's dtype.

    One query row (a decode step), a boolean mask or none: ``softmax(q kᵀ · scaling, masked) v`` with grouped
    key/value heads as a reshape of the query (as ``transformers``' ``pack_gqa``). Anything else (a prompt, a
    float mask, a model's extra terms): ``sdpa`` on float32 copies."""
    dtype = query.dtype
    query, key, value = query.float(), key.float(), value.float()   # no copy for the engine's float32 cache
    plain = (query.shape[2] == 1 and (attention_mask is None or attention_mask.dtype == torch.bool)
             and not any(kwargs.get(k) is not None for k in UNHANDLED))
    if not plain:
        mask, extra = _float32(attention_mask), {k: _float32(v) for k, v in kwargs.items()}   # additive terms too
        out, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, **extra)
        return out.to(dtype), None
    batch, heads, _, dims = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dims)                  # (B, Hkv, groups, D)
    scores = torch.matmul(q, key.transpose(-1, -2)).mul_(dims ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:                                               # (B, 1, 1, L): True = attend
        scores.masked_fill_(~attention_mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), value)                     # (B, Hkv, groups, Dv)
    out = out.reshape(batch, heads, 1, value.shape[-1])
    return out.transpose(1, 2).to(dtype), None                                   # (B, 1, H, Dv), as sdpa's


def _float32(value: Any) -> Any:
    """A floating-point tensor in float32 (an additive mask, a position bias), anything else as it is."""
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def applies(model: Any) -> bool:
    """Half-precision weights on CPU, with ``sdpa`` (transformers' default) as the model's attention."""
    weights = next(model.parameters())
    return (weights.device.type == "cpu" and weights.dtype in HALF
            and getattr(model.config, "_attn_implementation", None) in ("sdpa", NAME))


def use(model: Any) -> bool:
    """Switch ``model`` to this attention where :func:`applies`; True when it did (its KV cache then belongs in
    float32: :func:`cache_dtype`)."""
    if not applies(model):
        return False
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)    # prompts' masks built as for sdpa
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError, AttributeError) as exc:   # a model that cannot switch keeps sdpa
        logger.warning("attention: %s keeps sdpa in %s on CPU (slower): %s", type(model).__name__,
                       next(model.parameters()).dtype, exc)
    return getattr(model.config, "_attn_implementation", None) == NAME


def cache_dtype(model: Any) -> torch.dtype:
    """The dtype a KV cache for ``model`` keeps: float32 under this attention on CPU, the weights' dtype otherwise
    (a switched model later moved to a GPU computes in float32 still, but its cache stays half)."""
    weights = next(model.parameters())
    if getattr(model.config, "_attn_implementation", None) == NAME and weights.device.type == "cpu":
        return torch.float32
    return weights.dtype
