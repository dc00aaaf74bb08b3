"""MLflow for training: one run per run name, step metrics from rank 0, gated registration.

- Driver, before workers start: ``start_run`` creates (or, for a resubmitted run name, reopens)
  the MLflow run and logs params, the config, system info, the git commit and the dataset
  version as the run's input (lineage); ``record_changes`` audits a resume with changes (params
  are immutable in MLflow, so each one becomes a numbered tag naming what changed).
- Rank 0, during training: ``StepLogger`` batches per-step metrics (loss, throughput, step
  time, bytes and compression ratio) into ``log_batch`` calls; MLflow hiccups never stop training.
- Driver, after ``fit()``: ``finish`` logs the final model (``models.packaging``) and registers it
  as a new version only when the configured metric passes the threshold (``gate``), with
  lineage tags on the version. Doing this in the driver, after training succeeded, means a
  worker killed mid-run can never leave a half-registered model. A language model also carries
  a Hugging Face GPT-2 folder (``models.hf_export``) with its dataset's tokenizer, and its
  version the tokenizer's id and sha256 (docs/language-models.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cluster import files
from cluster.provenance import GIT_COMMIT_ENV, git_commit, source  # noqa: F401 - re-exported for callers
from cluster.registry import ModelVersionInfo, Registry
from train.config import RegistrationSection, TrainConfig

log = logging.getLogger(__name__)
RUN_ID_FILE = ".mlflow_run_id"


def system_info() -> dict[str, str]:
    import ray

    info = {"host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "cpu_count": str(os.cpu_count()), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return {f"system.{k}": v for k, v in info.items()}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def start_run(registry: Registry, config: TrainConfig, plan: Any, run_dir: str | Path) -> str:
    """Create or reopen the run for ``config.run_name``; returns its id."""
    import mlflow
    from mlflow.entities import Param, RunTag

    experiment_id = registry.ensure_experiment()
    client = registry.client
    id_file = files.join(run_dir, RUN_ID_FILE)
    run_id = (files.read_bytes(id_file) or b"").decode().strip() or None
    if run_id:
        try:
            client.get_run(run_id)
        except Exception:  # the run is gone (new tracking server): start a fresh one
            run_id = None
    if run_id is None:
        run_id = registry._call(client.create_run, experiment_id, None, {}, config.run_name).info.run_id
        files.atomic_write(id_file, run_id)
        params = [Param(k, v[:6000]) for k, v in flatten(config.model_dump(mode="json")).items()]
        tags = {**system_info(), **source().tags(), "rayline.run_name": config.run_name,
                **{f"rayline.{k}": v for k, v in plan.description.items()}}
        for i in range(0, len(params), 100):
            registry._call(client.log_batch, run_id, [], params[i:i + 100], [])
        registry._call(client.log_batch, run_id, [], [], [RunTag(k, str(v)) for k, v in tags.items()])
        registry._call(client.log_dict, run_id, config.model_dump(mode="json"), "train_config.json")
        if plan.dataset_version is not None:
            from ingest.lineage import log_dataset_input

            with mlflow.start_run(run_id=run_id):
                log_dataset_input(plan.dataset_version)
    return run_id


RESUME_TAG = "rayline.resume_with_changes"


def record_changes(registry: Registry, run_id: str, changes: list[str]) -> str:
    """Tag the reopened run with what a ``resume_with_changes`` changed; returns the tag's key."""
    from mlflow.entities import RunTag

    tags = registry._call(registry.client.get_run, run_id).data.tags
    key = f"{RESUME_TAG}.{sum(1 for k in tags if k.startswith(RESUME_TAG + '.')) + 1}"
    registry._call(registry.client.log_batch, run_id, [], [], [RunTag(key, "; ".join(changes)[:5000])])
    return key


class StepLogger:
    """Rank 0's metric logger: buffers steps and sends them every ``every`` steps in one call."""

    def __init__(self, tracking: dict[str, str] | None, every: int = 10) -> None:
        self.every = every
        self.run_id = (tracking or {}).get("run_id")
        self._buffer: list[Any] = []
        self._client = None
        if self.run_id:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=tracking["uri"])

    def log(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        if force or step % self.every == 0:
            now = int(time.time() * 1000)
            self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= 200 or (force and self._buffer):
            self.flush()

    def flush(self) -> None:
        if self._client is None or not self._buffer:
            return
        try:
            for i in range(0, len(self._buffer), 1000):
                self._client.log_batch(self.run_id, metrics=self._buffer[i:i + 1000])
        except Exception as exc:  # a tracking blip must not kill a training run
            log.warning("MLflow metric logging failed; continuing", extra={"error": str(exc)[:200]})
        self._buffer = []


def gate(section: RegistrationSection, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether the evaluation metric passes the configured threshold, and why."""
    value = metrics.get(section.metric)
    if value is None:
        return False, f"metric {section.metric!r} was not reported"
    if not math.isfinite(float(value)):  # a diverged run (NaN loss, inf perplexity) never passes
        return False, f"{section.metric}={value} is not finite"
    if section.threshold is None:
        return True, f"{section.metric}={value:.6g} (no threshold)"
    ok = value <= section.threshold if section.mode == "min" else value >= section.threshold
    relation = ("<=" if ok else ">") if section.mode == "min" else (">=" if ok else "<")
    return ok, f"{section.metric}={value:.6g} {relation} threshold {section.threshold:g}"


@dataclass
class Outcome:
    run_id: str
    metrics: dict[str, Any]
    model_uri: str | None = None
    registered: ModelVersionInfo | None = None
    gate_reason: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None  # the final checkpoint's path
    kept_checkpoints: list[str] = field(default_factory=list)  # what CheckpointConfig left on disk


def finish(registry: Registry, config: TrainConfig, plan: Any, outcome: Outcome, module: torch.nn.Module,
           input_example: list[dict[str, Any]] | None) -> Outcome:
    """Log the trained model to the run and register it if the gate passes."""
    import mlflow

    run_id, metrics = outcome.run_id, outcome.metrics
    with mlflow.start_run(run_id=run_id):
        final = {f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(final)
        tokenizer = lm_tokenizer(plan) if plan.task == "language_modeling" else None
        info = _log_module(module, plan, input_example, tokenizer)
        outcome.model_uri = info.model_uri
        section = config.registration
        if section is None:
            outcome.gate_reason = "no registration section"
            mlflow.set_tag("rayline.registration", "skipped: no registration section")
            return outcome
        passed, reason = gate(section, metrics)
        outcome.gate_reason = reason
        mlflow.set_tag("rayline.registration", ("passed: " if passed else "blocked: ") + reason)
    if not passed:
        log.info("model not registered", extra={"reason": reason})
        return outcome
    outcome.tags = {
        "dataset": plan.description.get("dataset", ""), "dataset_version": plan.description.get("dataset_version", ""),
        **source().tags(), "run_id": run_id, "run_name": config.run_name, "model": config.model.name,
        **{k: f"{float(v):.6g}" for k, v in metrics.items() if k.startswith("val_")},
        **(lm_tags(tokenizer) if plan.task == "language_modeling" else {}),
    }
    outcome.registered = registry.register(info.model_uri, section.model_name, outcome.tags)
    if section.alias:
        registry.set_alias(section.model_name, section.alias, outcome.registered.version)
        outcome.registered = registry.version(section.model_name, outcome.registered.version)
    return outcome


@dataclass(frozen=True)
class LMTokenizer:
    """The tokenizer a language model's token shards were made with (``tokenizer.json`` text)."""

    id: str
    json: str
    eos: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json.encode()).hexdigest()


def lm_tokenizer(plan: Any) -> LMTokenizer | None:
    """The plan's tokenizer, read from beside its dataset version's token shards; None for synthetic tokens.

    The data plan names it in ``description["tokenizer"]`` (the tokenizer id of the shards it read).
    """
    tokenizer_id = plan.description.get("tokenizer")
    if not tokenizer_id or plan.dataset_version is None:
        return None
    from ingest.tokens import token_manifest

    folder, manifest = token_manifest(plan.dataset_version, tokenizer_id)
    raw = files.read_bytes(files.join(folder, manifest["tokenizer"]["file"]))
    if raw is None:
        raise FileNotFoundError(f"{folder}: the token shards' tokenizer file is missing")
    return LMTokenizer(id=tokenizer_id, json=raw.decode(), eos=manifest["eos"])


def lm_tags(tokenizer: LMTokenizer | None) -> dict[str, str]:
    """Version tags of a language model: its format, where the HF folder is, which tokenizer."""
    from models.packaging import HF_FORMAT, HF_PATH

    tags = {"format": HF_FORMAT, "hf_path": HF_PATH}
    if tokenizer is not None:
        tags |= {"tokenizer": tokenizer.id, "tokenizer_sha256": tokenizer.sha256}
    return tags


def _log_module(module: torch.nn.Module, plan: Any, input_example: list[dict[str, Any]] | None,
                tokenizer: LMTokenizer | None = None) -> Any:
    if plan.preprocessing is not None:
        from models.packaging import log_model
        from models.preprocessing import Preprocessing

        return log_model(module, Preprocessing.from_dict(plan.preprocessing), input_example=input_example)
    from models.packaging import log_language_model

    if tokenizer is None:
        log.info("language model logged without tokenizer files: its data had none (synthetic tokens)",
                 extra={"dataset": plan.description.get("dataset", "")})
    with tempfile.TemporaryDirectory() as tmp:
        return log_language_model(module, tmp, tokenizer_json=tokenizer.json if tokenizer else None,
                                  eos=tokenizer.eos if tokenizer else None,
                                  lineage={k: str(v) for k, v in plan.description.items()})
