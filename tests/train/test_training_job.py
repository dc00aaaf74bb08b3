"""The tabular training job end to end on the shipped customers data: real ingest, real Ray Train
(2 CPU workers, fp16 gradient compression over gloo), real MLflow server.

One fit covers convergence, the measured compression ratio, gated registration with lineage
tags, aliasing from the CLI, loading back by ``models:/NAME@champion`` and the evaluation job.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from ingest.pipeline import run_ingest
from models.packaging import load_model
from train.config import RegistrationSection, TrainConfigError, parse_config
from train.tracking import gate
from train.trainer import prepare, train

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "customers-churn-test"


@pytest.fixture(scope="module")
def customers(settings):
    return run_ingest(str(ROOT / "examples/data/customers.csv"), ROOT / "examples/contracts/customers.yaml",
                      "customers", str(settings.datasets_root), settings=settings)


def _config(version: str, **over):
    return parse_config({
        "run_name": "customers-mlp-test", "seed": 1,
        "model": {"name": "tabular_mlp", "params": {"hidden": [32, 32]}},
        "data": {"dataset": "customers", "version": version},
        "optimizer": {"name": "adamw", "lr": 0.01}, "batch_size": 64, "epochs": 3,
        "compression": {"kind": "fp16"}, "checkpoint": {"keep": 2, "score_metric": "val_accuracy", "score_mode": "max"},
        "registration": {"model_name": MODEL_NAME, "metric": "val_accuracy", "threshold": 0.6, "mode": "max",
                         "alias": "challenger"},
        **over,
    })


def test_missing_dataset_version_fails_before_any_worker_starts(customers, settings):
    with pytest.raises(TrainConfigError, match=r"'data\.version'.*v999"):
        prepare(_config("v999"), settings)


def test_registration_gate_blocks_a_model_below_the_threshold():
    section = RegistrationSection(model_name="m", metric="val_accuracy", threshold=0.9, mode="max")
    assert gate(section, {"val_accuracy": 0.95})[0]
    passed, reason = gate(section, {"val_accuracy": 0.7})
    assert not passed and "0.7" in reason
    assert not gate(section, {"val_loss": 0.1})[0]


def test_tabular_job_converges_registers_with_lineage_and_loads_as_champion(ray_cluster, settings, customers,
                                                                             monkeypatch):
    outcome = train(_config(customers.version), settings)

    assert outcome.metrics["val_accuracy"] > 0.6
    assert outcome.metrics["compression_ratio"] == pytest.approx(2.0)
    history = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_metric_history(outcome.run_id, "loss")
    assert history[-1].value < history[0].value

    version = outcome.registered
    assert version is not None and version.aliases == ("challenger",)
    assert version.tags["dataset"] == "customers" and version.tags["dataset_version"] == customers.version
    assert version.tags["run_id"] == outcome.run_id and version.tags["git_commit"]
    assert float(version.tags["val_accuracy"]) == pytest.approx(outcome.metrics["val_accuracy"], rel=1e-4)
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(outcome.run_id)
    assert [d.dataset.name for d in run.inputs.dataset_inputs]  # the dataset version is the run's input

    monkeypatch.setenv("RAYLINE_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    monkeypatch.setenv("RAYLINE_DATASETS_ROOT", str(settings.datasets_root))
    runner = CliRunner()
    done = runner.invoke(app, ["models", "alias", MODEL_NAME, "champion", version.version])
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["models", "show", f"{MODEL_NAME}@champion"])
    assert shown.exit_code == 0, shown.output
    assert "champion" in shown.output and f"dataset_version={customers.version}" in shown.output

    loaded = load_model(f"models:/{MODEL_NAME}@champion")
    record = {"age": 40, "tenure_months": 12.0, "monthly_charges": 70.0, "plan": "basic", "region": "east"}
    assert loaded.predict_records([record])[0] in {"yes", "no"}

    from jobs.evaluate import main as evaluate

    summary = evaluate(["--model", f"models:/{MODEL_NAME}@champion", "--dataset", customers.version])
    assert summary["metrics"]["eval_accuracy"] == pytest.approx(outcome.metrics["val_accuracy"], abs=0.02)
    artifacts = [a.path for a in mlflow.MlflowClient(settings.mlflow_tracking_uri).list_artifacts(summary["run_id"])]
    assert "evaluation.png" in artifacts
