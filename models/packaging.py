"""How a rayline model travels through MLflow: torch module + its preprocessing, together.

(Any other ``python_function`` model is served too: :func:`load_served` tells them apart by
``preprocessing.json``; ``models.pyfunc_model`` serves the others.)

``log_model`` stores the module (pickle format: any nn.Module, no torch.export needed)
with a signature over the raw request fields and ``preprocessing.json`` beside it, so
the serving side needs only this module, torch and MLflow (never DeepSpeed or Ray Train).

A language model (``models.gpt``) is logged by ``log_language_model`` in the same pytorch
flavor (``mlflow.pytorch.load_model`` gives the trained ``GPT`` back) and carries, under
``extra_files/hf/`` of its artifacts, a Hugging Face GPT-2 folder (``models.hf_export``) that
``transformers`` and vLLM load with no rayline code: ``hf_dir(uri)`` downloads it. It is not a
request/response model, so ``load_model``/``load_served`` refuse it with :class:`LanguageModelArtifact`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.errors import RaylineError, RegistryError
from models.preprocessing import Preprocessing
from models.pyfunc_model import PyfuncModel, load_pyfunc

PREPROCESSING_FILE = "preprocessing.json"
HF_PATH = "extra_files/hf"  # the Hugging Face folder inside a language model's artifacts
HF_FORMAT = "hf-gpt2"  # the version tag ``format`` of such a model
# Explicit requirements skip MLflow's slow environment inference (~13 s → ~3 s per log).
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
HF_PACKAGES = ("transformers", "safetensors", "tokenizers")  # what loading the HF folder needs


class LanguageModelArtifact(RaylineError):
    """A language model was given where a request/response model is expected; ``str`` says where its HF folder is."""

    exit_code = 12


@dataclass
class LoadedModel:
    module: torch.nn.Module
    preprocessing: Preprocessing
    uri: str

    @torch.no_grad()
    def predict_records(self, records: list[dict[str, Any]]) -> list[Any]:
        """Raw records → predictions (validates fields; raises InputError naming the field)."""
        matrix = self.preprocessing.records_to_matrix(records)
        outputs = self.module(torch.from_numpy(matrix)).numpy()
        return self.preprocessing.decode_outputs(outputs)


def _signature(preprocessing: Preprocessing):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema(
        [ColSpec("double" if f.kind == "numeric" else "string", f.name) for f in preprocessing.features]
    )
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, preprocessing.num_outputs))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model(
    module: torch.nn.Module,
    preprocessing: Preprocessing,
    input_example: list[dict[str, Any]] | None = None,
    registered_model_name: str | None = None,
    name: str = "model",
):
    """Log ``module`` and its preprocessing to the active MLflow run (optionally registering it)."""
    import mlflow.pytorch

    module = module.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        pre_path = Path(tmp) / PREPROCESSING_FILE
        pre_path.write_text(json.dumps(preprocessing.to_dict(), indent=2))
        return mlflow.pytorch.log_model(
            module,
            name=name,
            serialization_format="pickle",
            signature=_signature(preprocessing),
            input_example=None,
            extra_files=[str(pre_path)],
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model_name,
            metadata={"rayline_input_example": input_example or []},
        )


def log_language_model(module: torch.nn.Module, staging: str | Path, tokenizer_json: str | None = None,
                       eos: str | None = None, lineage: dict[str, str] | None = None, name: str = "model"):
    """Log a trained GPT (pytorch flavor) with its Hugging Face folder at ``HF_PATH`` to the active run.

    ``staging`` is an empty scratch folder for the export (the caller removes it).
    """
    import mlflow.pytorch

    from models.hf_export import export

    module = module.cpu().eval()
    folder = export(module, Path(staging) / Path(HF_PATH).name, tokenizer_json, eos, lineage)
    example = np.zeros((1, module.config.seq_len), dtype=np.int64)
    requirements = [*PIP_REQUIREMENTS, *(f"{p}=={package_version(p)}" for p in HF_PACKAGES)]
    return mlflow.pytorch.log_model(module, name=name, serialization_format="pickle", input_example=example,
                                    extra_files=[str(folder)], pip_requirements=requirements,
                                    metadata={"rayline_format": HF_FORMAT, "hf_path": HF_PATH})


def hf_dir(uri: str, dst: str | None = None) -> Path:
    """Download a language model's Hugging Face folder (``models:/NAME/VERSION``, ``@ALIAS`` or a path)."""
    import mlflow.artifacts

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{HF_PATH}", dst_path=dst))
    except Exception as exc:  # MLflow's errors for a missing path or model: one line naming what is missing
        raise RegistryError(f"{uri} has no Hugging Face folder at {HF_PATH} (not a rayline language model?): "
                            f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if not (folder / "config.json").is_file():
        raise RegistryError(f"{uri}: {HF_PATH} has no config.json: not a rayline language model")
    return folder


def load_model(uri: str, dst: str | None = None) -> LoadedModel:
    """Load a module + preprocessing from ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or a path."""
    local = _download(uri, dst)
    _refuse_language_model(local, uri)
    if next(local.rglob(PREPROCESSING_FILE), None) is None:
        raise FileNotFoundError(f"{uri} has no {PREPROCESSING_FILE}: not a rayline model")
    return _load_rayline(local, uri)


def load_served(uri: str) -> LoadedModel | PyfuncModel:
    """What the model server serves: a rayline model (torch fast path) when its artifacts hold
    ``preprocessing.json``, else any ``python_function`` model (requirements checked first)."""
    local = _download(uri)
    _refuse_language_model(local, uri)
    if next(local.rglob(PREPROCESSING_FILE), None) is not None:
        return _load_rayline(local, uri)
    return load_pyfunc(local, uri)


def _refuse_language_model(local: Path, uri: str) -> None:
    if (local / HF_PATH / "config.json").is_file():
        raise LanguageModelArtifact(
            f"{uri} is a language model (Hugging Face GPT-2 folder at {HF_PATH} of its artifacts), not a "
            f"request/response model: load it with transformers (models.packaging.hf_dir) or an LLM server")


def _download(uri: str, dst: str | None = None) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))


def _load_rayline(local: Path, uri: str) -> LoadedModel:
    import mlflow.pytorch

    module = mlflow.pytorch.load_model(str(local), map_location="cpu").eval()
    pre_file = next(local.rglob(PREPROCESSING_FILE))
    preprocessing = Preprocessing.from_dict(json.loads(pre_file.read_text()))
    return LoadedModel(module=module, preprocessing=preprocessing, uri=uri)
