"""Evaluate a registered model on a dataset version: metrics to MLflow and a PNG report.

The plot shows the training run's learning curves (from its MLflow history) beside a
confusion matrix (classification) or residuals (regression). A language model (version tag
``format: hf-gpt2``) is evaluated by ``train.lm_evaluation``: perplexity and sampled completions.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.registry import Registry
from cluster.settings import Settings
from train.config import TrainConfigError

PLOT_FILE = "evaluation.png"


@dataclass
class Evaluation:
    model_ref: str
    model_version: str
    dataset: str
    dataset_version: str
    metrics: dict[str, float]
    run_id: str
    plot: str | None
    completions: list[dict[str, Any]] = field(default_factory=list)  # language models: sampled text


def metrics_for(task: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if task == "classification":
        predicted = outputs.argmax(axis=1)
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return {"eval_accuracy": float((predicted == targets).mean()),
                "eval_loss": float(-log_probs[np.arange(len(targets)), targets].mean()), "eval_rows": len(targets)}
    errors = outputs.reshape(-1) - targets
    return {"eval_rmse": math.sqrt(float((errors**2).mean())), "eval_mae": float(np.abs(errors).mean()),
            "eval_rows": len(targets)}


def plot(path: Path, task: str, outputs: np.ndarray, targets: np.ndarray, classes: tuple[str, ...],
         history: dict[str, list[tuple[int, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, points in sorted(history.items()):
        if points:
            steps, values = zip(*sorted(points), strict=True)
            curves.plot(steps, values, label=key, marker="o" if key.startswith("val_") else None, markersize=3)
    curves.set(title="learning curves (training run)", xlabel="step", ylabel="loss")
    curves.legend()
    if task == "classification":
        n = len(classes)
        matrix = np.zeros((n, n), dtype=int)
        np.add.at(matrix, (targets, outputs.argmax(axis=1)), 1)
        right.imshow(matrix, cmap="Blues")
        right.set(title="confusion matrix", xlabel="predicted", ylabel="actual",
                  xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes)
        for i in range(n):
            for j in range(n):
                right.text(j, i, str(matrix[i, j]), ha="center", va="center")
    else:
        predicted = outputs.reshape(-1)
        right.scatter(predicted, predicted - targets, s=6, alpha=0.5)
        right.axhline(0, color="grey")
        right.set(title="residuals", xlabel="predicted", ylabel="predicted − actual")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _history(registry: Registry, run_id: str | None) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    if not run_id:
        return out
    for key in ("loss", "val_loss"):
        try:
            out[key] = [(m.step, m.value) for m in registry.client.get_metric_history(run_id, key)]
        except Exception:  # a model logged elsewhere has no training history: plot what there is
            out[key] = []
    return out


def evaluate(settings: Settings, model_ref: str, dataset: str | None, version: str) -> Evaluation:
    """Evaluate ``model_ref`` (models:/NAME@ALIAS or /VERSION) on ``dataset``'s validation split."""
    import mlflow

    from ingest.catalog import Catalog
    from models.packaging import HF_FORMAT, load_model

    registry = Registry(settings)
    registry.require_healthy()
    info = registry.resolve(model_ref)
    dataset = dataset or info.tags.get("dataset")
    if not dataset:
        raise TrainConfigError(f"invalid 'dataset': {model_ref} has no dataset tag; pass NAME/VERSION")
    if info.tags.get("format") == HF_FORMAT:
        return _evaluate_language_model(settings, registry, info, model_ref, dataset, version)
    catalog = Catalog(settings.datasets_root)
    try:
        found = catalog.latest(dataset) if version == "latest" else catalog.get(dataset, version)
    except Exception as exc:
        raise TrainConfigError(f"invalid 'dataset': {dataset} {version} not found: {exc}") from None
    loaded = load_model(f"models:/{info.name}/{info.version}")
    pre = loaded.preprocessing
    # One process scores the whole split: Polars reads it directly, without Ray Data's start-up cost.
    frame = found.lazy(split="validation").collect()
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    with torch.no_grad():
        outputs = loaded.module(torch.from_numpy(pre.to_matrix(columns))).numpy()
    targets = frame[pre.target].to_numpy()
    targets = targets.astype(np.int64) if pre.task == "classification" else targets.astype(np.float32)
    metrics = metrics_for(pre.task, outputs, targets)
    with _evaluation_run(registry, info, model_ref, dataset, str(found.version)) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_metrics(metrics)
        path = Path(tmp) / PLOT_FILE
        plot(path, pre.task, outputs, targets, pre.classes, _history(registry, info.run_id))
        mlflow.log_artifact(str(path))
        run_id = run.info.run_id
    return Evaluation(model_ref=model_ref, model_version=info.version, dataset=dataset,
                      dataset_version=str(found.version), metrics=metrics, run_id=run_id, plot=PLOT_FILE)


def _evaluation_run(registry: Registry, info: Any, model_ref: str, dataset: str, dataset_version: str,
                    **tags: str) -> Any:
    """A new MLflow run for this evaluation, tagged with what was evaluated on what."""
    import mlflow

    registry.ensure_experiment()
    mlflow.set_experiment(registry.experiment)
    run = mlflow.start_run(run_name=f"evaluate-{info.name}-v{info.version}")
    mlflow.set_tags({"rayline.job": "evaluate", "model": f"{info.name}/{info.version}", "dataset": dataset,
                     "dataset_version": dataset_version, "model_ref": model_ref, **tags})
    return run


def _evaluate_language_model(settings: Settings, registry: Registry, info: Any, model_ref: str,
                             dataset: str, version: str) -> Evaluation:
    import mlflow

    from models.packaging import hf_dir
    from train.lm_evaluation import COMPLETIONS_FILE, evaluate_language_model

    tokenizer_id = info.tags.get("tokenizer")
    if not tokenizer_id:
        raise TrainConfigError(f"invalid 'model': {model_ref} was trained without a tokenizer (synthetic "
                               "tokens): there is no text dataset to evaluate it on")
    with tempfile.TemporaryDirectory() as tmp:
        folder = hf_dir(f"models:/{info.name}/{info.version}", tmp)
        metrics, samples, found = evaluate_language_model(str(settings.datasets_root), str(folder), dataset,
                                                          version, tokenizer_id, info.tags.get("dataset_version", ""))
    with _evaluation_run(registry, info, model_ref, dataset, found, tokenizer=tokenizer_id) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_text(json.dumps(samples, indent=2, ensure_ascii=False), COMPLETIONS_FILE)
        run_id = run.info.run_id
    return Evaluation(model_ref=model_ref, model_version=info.version, dataset=dataset, dataset_version=found,
                      metrics=metrics, run_id=run_id, plot=None, completions=samples)


def describe(evaluation: Evaluation) -> dict[str, Any]:
    summary = {"job": "evaluate", **evaluation.__dict__}
    if not evaluation.completions:
        summary.pop("completions")
    return summary
