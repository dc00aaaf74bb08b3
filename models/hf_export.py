"""A trained rayline GPT as a Hugging Face GPT-2 folder: what transformers and vLLM load unchanged.

``export(module, directory, tokenizer_json, eos)`` writes ``config.json`` (``GPT2Config``),
``generation_config.json``, ``model.safetensors`` and, when the training data had a tokenizer,
``tokenizer.json`` + ``tokenizer_config.json`` (a ``PreTrainedTokenizerFast`` whose eos, bos and
pad are the dataset's end-of-document token). Then ``AutoModelForCausalLM.from_pretrained(dir)``
gives the same logits as :class:`models.gpt.GPT` (tests/train/test_hf_export.py), with no
rayline import.

The mapping is exact, not approximate:

- GPT-2's ``Conv1D`` stores weights as ``[in, out]``: every ``nn.Linear`` weight is transposed;
  ``qkv``/``proj``/``fc``/``proj`` become ``c_attn``/``attn.c_proj``/``mlp.c_fc``/``mlp.c_proj``.
- Our MLP uses exact ``F.gelu``: ``activation_function="gelu"`` (GPT-2's default is ``gelu_new``,
  the tanh approximation). LayerNorm eps 1e-5 (``nn.LayerNorm``'s default); ``n_positions`` is
  the training ``seq_len``; attention scaled by ``1/sqrt(head_dim)`` only
  (``scale_attn_by_inverse_layer_idx=False``, ``reorder_and_upcast_attn=False``), as
  ``scaled_dot_product_attention`` does; ``lm_head`` tied to ``wte``.
- ``bias: false`` has no GPT-2 equivalent: the biases are exported as zeros, which gives the
  same outputs (a LayerNorm or Linear with a zero bias is the same function as one without).
- Dropout is recorded (``resid/embd/attn_pdrop``) but is off at inference in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.gpt import GPT, GPTConfig

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, what models.gpt uses
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# (ours, theirs, is a Linear weight to transpose for Conv1D) inside each block
_BLOCK_PARAMS = (
    ("ln_1.weight", "ln_1.weight", False), ("ln_1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True), ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True), ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False), ("ln_2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True), ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True), ("mlp.proj.bias", "mlp.c_proj.bias", False),
)


def gpt2_config(config: GPTConfig, eos_id: int | None = None):  # -> transformers.GPT2Config
    """The ``GPT2Config`` that makes GPT2LMHeadModel compute what ``GPT(config)`` computes."""
    from transformers import GPT2Config

    # No tokenizer (synthetic tokens): no special ids, rather than GPT-2's 50256 outside the vocabulary.
    special = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.seq_len, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.n_embd, activation_function="gelu",
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False, tie_word_embeddings=True, use_cache=True,
        architectures=["GPT2LMHeadModel"], **special,
    )


def gpt2_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our ``GPT.state_dict()`` under GPT-2's names and shapes (biases as zeros when ``bias`` is off)."""
    def bias_like(name: str, width: int) -> torch.Tensor:
        return state[name] if name in state else torch.zeros(width, dtype=state["wte.weight"].dtype)

    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["ln_f.weight"],
           "transformer.ln_f.bias": bias_like("ln_f.bias", config.n_embd),
           "lm_head.weight": state["wte.weight"]}
    widths = {"ln_1": config.n_embd, "ln_2": config.n_embd, "attn.qkv": 3 * config.n_embd,
              "attn.proj": config.n_embd, "mlp.fc": 4 * config.n_embd, "mlp.proj": config.n_embd}
    for i in range(config.n_layer):
        for ours, theirs, transpose in _BLOCK_PARAMS:
            key = f"blocks.{i}.{ours}"
            if ours.endswith(".bias"):
                value = bias_like(key, widths[ours.removesuffix(".bias")])
            else:
                value = state[key].t() if transpose else state[key]
            out[f"transformer.h.{i}.{theirs}"] = value.detach().contiguous().clone()
    return out


def to_gpt2(module: GPT, eos_id: int | None = None):  # -> transformers.GPT2LMHeadModel
    """A ``GPT2LMHeadModel`` holding ``module``'s weights (every parameter set; strict load)."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(gpt2_config(module.config, eos_id))
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    missing, unexpected = model.load_state_dict(gpt2_state_dict(state, module.config), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte: set by tie_weights()
    if missing or unexpected:
        raise ValueError(f"GPT → GPT-2 mapping left missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model.eval()


def hf_tokenizer(tokenizer_json: str, eos: str):  # -> transformers.PreTrainedTokenizerFast
    """The dataset's byte-level BPE as a ``PreTrainedTokenizerFast`` (eos = bos = pad = ``eos``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), eos_token=eos,
                                   bos_token=eos, pad_token=eos, unk_token=None,
                                   model_max_length=None, clean_up_tokenization_spaces=False)


def export(module: GPT, directory: str | Path, tokenizer_json: str | None = None, eos: str | None = None,
           lineage: dict[str, str] | None = None) -> Path:
    """Write the HF GPT-2 folder for ``module`` (plus its tokenizer when given); returns the folder.

    ``lineage`` (dataset, version, tokenizer id…) goes into ``rayline.json`` beside the weights, for
    people who find the folder without its registry entry.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Writing model shards" bars in job logs
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = hf_tokenizer(tokenizer_json, eos or "") if tokenizer_json is not None else None
    eos_id = tokenizer.convert_tokens_to_ids(eos) if tokenizer is not None else None
    model = to_gpt2(module, eos_id)
    model.generation_config.max_length = module.config.seq_len
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.model_max_length = module.config.seq_len
        tokenizer.save_pretrained(directory)
    (directory / "rayline.json").write_text(json.dumps(
        {"source": "rayline models.gpt", "gpt_config": module.config.__dict__, "tokenizer": tokenizer is not None,
         **(lineage or {})}, indent=2, sort_keys=True))
    return directory


def describe(directory: str | Path) -> dict[str, Any]:
    """What an exported folder holds (for logs and the run's summary)."""
    directory = Path(directory)
    return {"files": sorted(p.name for p in directory.iterdir()),
            "tokenizer": all((directory / f).is_file() for f in TOKENIZER_FILES)}
