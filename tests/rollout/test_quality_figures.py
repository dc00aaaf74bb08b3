"""The quality gate's fresh evaluation, as `rayline canary start` runs it: two versions measured on different
dataset versions are both scored on the latest one (with the evaluation job's code) and then compared.

Real MLflow server, real catalog (the shipped customers table ingested), real registered torch models;
no Ray is needed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def register(settings, model: str, seed: int, preprocessing, tags: dict[str, str]) -> str:
    import mlflow
    import torch

    from cluster.registry import Registry
    from models.packaging import log_model
    from models.tabular import TabularMLP, TabularMLPConfig

    torch.manual_seed(seed)
    module = TabularMLP(TabularMLPConfig(preprocessing.num_inputs, preprocessing.num_outputs, hidden=(8,)))
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.ensure_experiment()):
        log_model(module, preprocessing, registered_model_name=model)
    version = registry.versions(model)[-1].version
    for key, value in tags.items():
        registry.set_version_tag(model, version, key, value)
    return version


@pytest.mark.timeout(180)
def test_versions_measured_on_different_dataset_versions_are_both_evaluated_on_the_latest_and_compared(settings):
    from cluster.registry import Registry
    from deployments.rollout.figures import check_before_start, judge
    from deployments.rollout.spec import parse_spec
    from ingest.pipeline import run_ingest

    dataset = f"gate-{uuid.uuid4().hex[:6]}"
    found = run_ingest(str(ROOT / "examples/data/customers.csv"), ROOT / "examples/contracts/customers.yaml",
                       dataset, str(settings.datasets_root), settings=settings)
    model = f"gate-fresh-{uuid.uuid4().hex[:6]}"
    # what each version's training run saw: other (older) dataset versions, so the tags are not comparable
    v1 = register(settings, model, 0, found.preprocessing(),
                  {"dataset": dataset, "dataset_version": "v-older", "val_accuracy": "0.99"})
    v2 = register(settings, model, 1, found.preprocessing(),
                  {"dataset": dataset, "dataset_version": "v-old", "val_accuracy": "0.10"})
    spec = parse_spec({"model": model, "baseline": v1, "candidate": v2, "quality": {"max_regression": 1.0}})

    result, lines = check_before_start(settings, spec)

    assert result is not None and result.measured, result
    assert result.details["dataset_version"] == str(found.version)
    assert len(lines) == 2 and all(line.startswith("evaluated v") for line in lines), lines
    assert result.details["baseline"] not in (0.99, 0.10) and result.details["candidate"] not in (0.99, 0.10)
    assert "evaluation run" in result.reason and f"version {found.version}" in result.reason
    registry = Registry(settings)   # the controller, reading only, now finds the same figures
    infos = [registry.version(model, v) for v in (v1, v2)]
    assert judge(registry, spec.quality, *infos).details == result.details
