"""Model factories: names resolve to plain modules; the GPT is causal."""

from __future__ import annotations

import pytest
import torch

from models.registry import DataSpec, build_model


def test_gpt_logits_at_a_position_ignore_later_tokens():
    torch.manual_seed(0)
    model = build_model("gpt", {"n_layer": 2, "n_embd": 32, "n_head": 4}, DataSpec("tokens", vocab_size=50, seq_len=12))
    model.eval()
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert a.shape == (2, 12, 50)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_tabular_mlp_takes_its_sizes_from_the_data():
    model = build_model("tabular_mlp", {"hidden": [8]}, DataSpec("tabular", num_inputs=5, num_outputs=3))
    assert model(torch.zeros(4, 5)).shape == (4, 3)


def test_a_model_refuses_the_wrong_kind_of_data():
    with pytest.raises(ValueError, match="needs tokens data"):
        build_model("gpt", {}, DataSpec("tabular", num_inputs=5, num_outputs=3))
