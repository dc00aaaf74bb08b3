"""A registered language model version, in the Hugging Face layout, loaded for generation.

The version's artifacts (``models:/NAME/VERSION`` after resolving an alias once, so every
replica pins the same version) are downloaded through MLflow and loaded with
``AutoModelForCausalLM`` / ``AutoTokenizer``. The Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) may be the artifact root (a version registered from
``runs:/RUN/hf``), its ``hf/`` folder (a version registered from the whole run's artifacts) or
``extra_files/hf/`` (a GPT trained and registered by rayline, ``models.packaging.HF_PATH``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from cluster.errors import ConfigError, RegistryError
from cluster.registry import ModelVersionInfo, Registry
from cluster.settings import load_settings
from deployments.serve_config import LLMDtype
from models.packaging import HF_PATH

HF_SUBDIR = "hf"
DEVICES = ("cpu", "cuda")
DTYPES = get_args(LLMDtype)

logger = logging.getLogger(__name__)


@dataclass
class LoadedLM:
    info: ModelVersionInfo
    model: Any        # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any    # transformers PreTrainedTokenizerBase


def hf_dir(root: Path) -> Path:
    """Where the Hugging Face files are under a version's artifacts: the root, ``hf/`` or ``extra_files/hf/``."""
    for candidate in (root, root / HF_SUBDIR, root / HF_PATH):
        if (candidate / "config.json").is_file():
            return candidate
    raise RegistryError(f"{root} holds no Hugging Face model (no config.json at its root, under {HF_SUBDIR}/ "
                        f"or {HF_PATH}/)")


def resolve(ref: str, tracking_uri: str | None) -> ModelVersionInfo:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → the version it names now."""
    return Registry(load_settings(mlflow_tracking_uri=tracking_uri)).resolve(ref)


def check_device(device: str) -> None:
    """``device`` is ``cpu``, or ``cuda`` where torch sees a GPU; ConfigError naming the field otherwise."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA GPU in this replica "
                          "(set num_gpus > 0 on a node with a GPU, or device 'cpu')")


def check_dtype(dtype: str) -> None:
    """``dtype`` is one of :data:`DTYPES`; ConfigError naming the field otherwise."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")


def warn_if_emulated(model: Any) -> None:
    """Log when the loaded weights are in a half precision this CPU has no native instructions for: it still runs
    (torch emulates it), only slower than float32. After loading, so that ``auto`` is judged by what it loaded."""
    import torch

    weights = next(model.parameters())
    if weights.device.type != "cpu":
        return
    dtype = weights.dtype
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("dtype: bfloat16 on a CPU without native bfloat16 instructions (AVX512-BF16 or AMX) runs "
                       "slower than float32")
    if dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        logger.warning("dtype: float16 on a CPU without native float16 instructions (AMX-FP16) runs slower than "
                       "float32")


def download(info: ModelVersionInfo) -> Path:
    """The version's Hugging Face folder, its artifacts downloaded here."""
    import mlflow.artifacts

    return hf_dir(Path(mlflow.artifacts.download_artifacts(artifact_uri=info.uri)))


def from_folder(folder: str | Path, device: str = "cpu", dtype: str = "auto") -> tuple[Any, Any]:
    """Model (in ``dtype``, eval, on ``device``) and tokenizer from a Hugging Face folder (the replica's, or its
    engine process's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    warn_if_emulated(model)
    return model, AutoTokenizer.from_pretrained(folder)


def load(info: ModelVersionInfo, device: str = "cpu", dtype: str = "auto") -> LoadedLM:
    """Download the version's artifacts and load model and tokenizer (in ``dtype``, eval, on ``device``)."""
    return LoadedLM(info, *from_folder(download(info), device, dtype))
