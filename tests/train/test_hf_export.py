"""The Hugging Face export of a GPT: loaded by a process that imports only transformers and torch,
it computes the training module's logits (with and without biases, both attention kernels) and
its tokenizer encodes and decodes as the dataset's tokenizer does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ingest.text_contract import TokenizerSpec
from ingest.tokenizer import train_bpe
from models.gpt import GPT, GPTConfig
from models.hf_export import export

EOS = "<|endoftext|>"
TEXTS = ["def add(a, b):\n    return a + b\n", "héllo wörld — ünïcode ✓", f"one{EOS}two", "  leading spaces\ttab"]
CORPUS = ["import os\nimport sys\n", "def main():\n    print('hello world')\n", "class A:\n    pass\n"] * 20
RAYLINE_PACKAGES = ("models", "train", "ingest", "cluster", "deployments", "jobs", "rayline")

LOADER = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
root, texts = sys.argv[1], json.loads(sys.argv[2])
tokens = torch.load(root + "/tokens.pt")
out = {{}}
for name in ("bias", "nobias"):
    for kernel in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(root + "/" + name, attn_implementation=kernel).eval()
        with torch.no_grad():
            out[name + "-" + kernel] = model(input_ids=tokens).logits
tokenizer = AutoTokenizer.from_pretrained(root + "/bias")
out["ids"] = [tokenizer.encode(t) for t in texts]
out["decoded"] = [tokenizer.decode(ids) for ids in out["ids"]]
out["special"] = [tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token, tokenizer.eos_token_id,
                  json.load(open(root + "/bias/config.json"))["eos_token_id"]]
torch.save(out, root + "/out.pt")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {RAYLINE_PACKAGES!r})))
"""


def _trained_gpt(bias: bool, vocab_size: int) -> GPT:
    """A small GPT with every parameter moved off its init (zero biases, unit norms would hide a bad mapping)."""
    torch.manual_seed(1 if bias else 2)
    model = GPT(GPTConfig(vocab_size=vocab_size, seq_len=24, n_layer=2, n_head=4, n_embd=32, bias=bias)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.timeout(120)
def test_export_loads_with_only_transformers_and_gives_the_training_modules_logits_and_tokens(tmp_path: Path):
    tokenizer = train_bpe(iter(CORPUS), TokenizerSpec(vocab_size=300, min_frequency=1))
    vocab = tokenizer.get_vocab_size()
    models = {"bias": _trained_gpt(True, vocab), "nobias": _trained_gpt(False, vocab)}
    for name, model in models.items():
        export(model, tmp_path / name, tokenizer.to_str() if name == "bias" else None, EOS)
    tokens = torch.randint(0, vocab, (3, 24), generator=torch.Generator().manual_seed(0))
    torch.save(tokens, tmp_path / "tokens.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # rayline is not even importable there
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path), json.dumps(TEXTS)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    out = torch.load(tmp_path / "out.pt")

    with torch.no_grad():
        for name, model in models.items():
            expected = model(tokens)
            for kernel in ("sdpa", "eager"):
                torch.testing.assert_close(out[f"{name}-{kernel}"], expected, atol=1e-5, rtol=0)
    assert out["ids"] == [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert out["decoded"] == TEXTS
    eos_id = tokenizer.token_to_id(EOS)
    assert out["special"] == [EOS, EOS, EOS, eos_id, eos_id]


def test_export_without_a_tokenizer_writes_config_and_weights_only(tmp_path: Path):
    folder = export(_trained_gpt(False, 64), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())

    assert not (folder / "tokenizer.json").exists() and (folder / "model.safetensors").is_file()
    assert config["activation_function"] == "gelu" and config["n_positions"] == 24
    assert config["eos_token_id"] is None and config["layer_norm_epsilon"] == 1e-5
