"""DeepSpeed options are validated in the driver: bad ones fail with the reason before any worker starts.

Pure validation (no Ray, no process group); DeepSpeed's own config parser runs on every result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from train.deepspeed_config import DeepSpeedOptionError, DeepSpeedOptions, build_ds_config, validate_ds_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "train"
JOB = dict(micro_batch_size=8, learning_rate=1e-3, world_size=2)
CPU = dict(device="cpu", backend="gloo")
GPU = dict(device="cuda", backend="nccl")


def build(device: dict = CPU, **options):
    return build_ds_config(DeepSpeedOptions(**options), **JOB, **device)


def test_generated_config_carries_the_job_settings_and_zero_stage():
    config = build_ds_config(DeepSpeedOptions(stage=1, gradient_accumulation_steps=2), micro_batch_size=8,
                             learning_rate=3e-4, weight_decay=0.1, precision="bf16", grad_clip=0.5,
                             schedule="cosine", warmup_steps=5, total_steps=100, world_size=2, **CPU)
    assert config["zero_optimization"]["stage"] == 1
    assert config["train_batch_size"] == 8 * 2 * 2
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True}
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["lr"] == 3e-4
    assert config["scheduler"]["type"] == "WarmupCosineLR"


def test_cpu_runs_use_torch_adam_so_no_op_is_compiled_but_gpu_runs_use_fused_adam():
    assert build()["optimizer"]["params"]["torch_adam"] is True
    assert build(GPU)["optimizer"]["params"]["torch_adam"] is False


def test_optimizer_offload_is_generated_for_stage_2_on_gpu():
    zero = build(GPU, stage=2, offload_optimizer=True)["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"


def test_zero_plus_plus_options_are_generated_for_stage_3_on_gpu_with_nccl():
    zero = build(GPU, stage=3, zero_quantized_weights=True, zero_quantized_gradients=True,
                 zero_hpz_partition_size=2)["zero_optimization"]
    assert zero["zero_quantized_weights"] and zero["zero_quantized_gradients"]
    assert zero["zero_hpz_partition_size"] == 2


@pytest.mark.parametrize("name", ["OneBitAdam", "ZeroOneAdam", "onebit_adam", "OneBitLamb"])
def test_one_bit_optimizers_are_rejected_as_removed_from_deepspeed(name):
    with pytest.raises(DeepSpeedOptionError, match=r"removed from DeepSpeed in 0\.19\.7"):
        DeepSpeedOptions(optimizer=name)


def test_one_bit_optimizer_in_raw_json_is_rejected_with_the_same_reason():
    options = DeepSpeedOptions(raw={"optimizer": {"type": "ZeroOneAdam", "params": {"lr": 1e-3}}})
    with pytest.raises(DeepSpeedOptionError, match=r"ZeroOneAdam was removed from DeepSpeed in 0\.19\.7"):
        validate_ds_options(options, **GPU)


@pytest.mark.parametrize("option", [{"zero_quantized_weights": True}, {"zero_quantized_gradients": True},
                                    {"zero_hpz_partition_size": 2}])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_plus_plus_on_a_stage_below_3_is_rejected_as_contradictory(option, stage):
    with pytest.raises(DeepSpeedOptionError, match=f"only apply to ZeRO stage 3, not stage {stage}"):
        validate_ds_options(DeepSpeedOptions(stage=stage, **option), **GPU)


@pytest.mark.parametrize("option, reason", [
    ({"stage": 3, "zero_quantized_weights": True}, "zero_quantized_weights needs a CUDA device"),
    ({"stage": 3, "zero_quantized_gradients": True}, "zero_quantized_gradients needs a CUDA device"),
    ({"stage": 3, "zero_hpz_partition_size": 2}, "needs a CUDA device"),
    ({"stage": 2, "offload_optimizer": True}, "offload_optimizer needs a CUDA device"),
    ({"raw": {"fp16": {"enabled": True}}}, "fp16 needs a CUDA device"),
])
def test_gpu_only_options_are_rejected_on_cpu_with_the_reason(option, reason):
    with pytest.raises(DeepSpeedOptionError, match=reason):
        validate_ds_options(DeepSpeedOptions(**option), **CPU)


def test_quantized_communication_needs_nccl_even_on_a_gpu():
    with pytest.raises(DeepSpeedOptionError, match="needs the NCCL backend"):
        validate_ds_options(DeepSpeedOptions(stage=3, zero_quantized_gradients=True), device="cuda", backend="gloo")


def test_offload_needs_stage_2_or_3():
    with pytest.raises(DeepSpeedOptionError, match="offload_optimizer needs ZeRO stage 2 or 3"):
        validate_ds_options(DeepSpeedOptions(stage=1, offload_optimizer=True), **GPU)


def test_unknown_top_level_raw_key_is_rejected_against_deepspeeds_schema():
    with pytest.raises(DeepSpeedOptionError, match=r"unknown DeepSpeed config keys \['zero_optimisation'\]"):
        build(raw={"zero_optimisation": {"stage": 2}})


def test_unknown_zero_key_is_rejected_by_deepspeeds_own_parser():
    with pytest.raises(DeepSpeedOptionError, match=r"DeepSpeed rejects the config: .*overlap_com"):
        build(raw={"zero_optimization": {"overlap_com": True}})


def test_raw_key_removed_from_deepspeed_is_rejected_with_deepspeeds_reason():
    with pytest.raises(DeepSpeedOptionError, match="Elastic training has been removed"):
        build(raw={"elasticity": {"enabled": True}})


def test_raw_value_contradicting_the_job_config_is_rejected():
    with pytest.raises(DeepSpeedOptionError, match="train_batch_size=7 but the job config says 16"):
        build(raw={"train_batch_size": 7})
    with pytest.raises(DeepSpeedOptionError, match=r"zero_optimization\.stage=3 but the job config says 1"):
        build(stage=1, raw={"zero_optimization": {"stage": 3}})


def test_raw_json_may_choose_what_the_options_leave_at_their_defaults():
    config = build(raw={"zero_optimization": {"stage": 1, "reduce_bucket_size": 1_000_000},
                        "gradient_accumulation_steps": 4, "steps_per_print": 5})
    assert config["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 1_000_000}
    assert config["train_batch_size"] == 8 * 4 * 2
    assert config["steps_per_print"] == 5


def test_unknown_option_in_the_deepspeed_section_is_a_config_error():
    with pytest.raises(ValueError, match="zero_stage"):
        DeepSpeedOptions(zero_stage=2)
    assert issubclass(DeepSpeedOptionError, ConfigError)


def test_hpz_partition_must_divide_the_workers():
    with pytest.raises(DeepSpeedOptionError, match="must divide the 2 workers"):
        build(GPU, stage=3, zero_hpz_partition_size=4)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*deepspeed*.yaml")), ids=lambda p: p.name)
def test_example_configs_pass_the_driver_checks(example):
    from train.config import load_config
    from train.strategy import strategy_class

    strategy_class(load_config(example))  # the GPU example validates as a GPU (CUDA + NCCL) run


def test_gpu_example_is_rejected_on_a_cpu_cluster_before_workers_start():
    from train.config import load_config
    from train.strategy import strategy_class

    config = load_config(EXAMPLES / "gpt_deepspeed_zero3_gpu.yaml")
    config.scaling.use_gpu = False
    with pytest.raises(DeepSpeedOptionError, match="needs a CUDA device"):
        strategy_class(config)
