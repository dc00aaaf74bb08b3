"""Lineage on a real MLflow server: the ingest run and a training run both name the exact version."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient

from cluster.settings import Settings
from ingest.lineage import log_dataset_input
from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV


def test_ingest_run_and_training_run_record_the_dataset_version(settings: Settings, tmp_path: Path) -> None:
    v = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "lineage", str(tmp_path / "cat"), settings=settings,
                   log_to_mlflow=True)
    client = MlflowClient(str(settings.mlflow_tracking_uri))
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`rayline.dataset_version` = '{v.version}'")
    assert len(runs) == 1 and runs[0].data.tags["rayline.job"] == "ingest"
    assert runs[0].data.metrics["rows_out"] == v.manifest["counts"]["rows_out"]
    (logged,) = runs[0].inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("lineage", v.version.removeprefix("v-"))
    assert Path(v.path).as_uri() in logged.dataset.source

    mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        log_dataset_input(v)
    (trained,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    tags = {t.key: t.value for t in trained.tags}
    assert tags["mlflow.data.context"] == "training" and tags["rayline.dataset_version"] == v.version
    assert trained.dataset.digest == logged.dataset.digest
