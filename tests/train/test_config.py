"""A bad training config fails before any worker starts, and the message names the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.config import TrainConfigError, parse_config

VALID = {"run_name": "r1", "model": {"name": "tabular_mlp"}, "data": {"dataset": "customers", "version": "v1"}}


def _with(**changes):
    data = {**VALID}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section] = {**data.get(section, {}), key: value}
        else:
            data[section] = value
    return data


@pytest.mark.parametrize(("changes", "field"), [
    ({"model__name": "resnet9000"}, "'model.name'"),
    ({"optimizer__lr": -0.1}, "'optimizer.lr'"),
    ({"data__version": None}, "'data.version'"),
    ({"model__params": {"layers": 3}}, "'model.params'"),
    ({"batch_size": 0}, "'batch_size'"),
    ({"compression__kind": "zip"}, "'compression.kind'"),
    ({"checkpoint__keep": 0}, "'checkpoint.keep'"),
])
def test_invalid_config_is_rejected_naming_the_field(changes, field):
    with pytest.raises(TrainConfigError) as err:
        parse_config(_with(**changes))
    assert field in str(err.value)


def test_bf16_compression_on_gloo_is_rejected_with_the_reason():
    with pytest.raises(TrainConfigError, match=r"'compression\.kind'.*NCCL"):
        parse_config(_with(compression__kind="bf16"))
    assert parse_config(_with(compression__kind="bf16", scaling__use_gpu=True)).backend == "nccl"


def test_gpt_without_a_dataset_trains_on_synthetic_tokens():
    config = parse_config({"run_name": "lm", "model": {"name": "gpt", "params": {"n_layer": 1}}})
    assert config.data.synthetic_tokens is not None and config.data_kind == "tokens"


def test_cli_rejects_a_bad_config_with_one_line_and_exit_code_2(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(optimizer__lr=-1)))
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "--state-dir", str(tmp_path), "train", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "'optimizer.lr'" in done.stderr and "Traceback" not in done.stderr
