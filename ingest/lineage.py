"""Lineage: a dataset version logged as an MLflow dataset input, so a run names what it read."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.settings import Settings
    from ingest.catalog import DatasetVersion

log = logging.getLogger(__name__)


def mlflow_dataset(version: DatasetVersion):  # -> mlflow.data.meta_dataset.MetaDataset
    """The version as an MLflow dataset: its path as source, its version as digest, its schema."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    types = {"Float64": DataType.double, "Float32": DataType.float, "Int64": DataType.long,
             "Int32": DataType.integer, "Boolean": DataType.boolean}
    schema = Schema([ColSpec(types.get(t, DataType.string), name)
                     for name, t in version.manifest.get("schema", {}).items()])
    with warnings.catch_warnings():  # MLflow registers the local-artifact source twice and warns about it
        warnings.simplefilter("ignore", UserWarning)
        uri = version.path if "://" in version.path else Path(version.path).resolve().as_uri()
        source = resolve_dataset_source(uri)
    return MetaDataset(source=source, name=version.name, digest=version.version.removeprefix("v-"), schema=schema)


def tags(version: DatasetVersion) -> dict[str, str]:
    return {"rayline.dataset": version.name, "rayline.dataset_version": version.version,
            "rayline.dataset_path": version.path,
            "rayline.contract_hash": str(version.manifest.get("contract", {}).get("hash", ""))}


def log_dataset_input(version: DatasetVersion, context: str = "training") -> None:
    """Log ``version`` as an input of the ACTIVE MLflow run (trainers call this inside their run)."""
    import mlflow

    mlflow.log_input(mlflow_dataset(version), context=context, tags=tags(version))


def log_ingest_run(version: DatasetVersion, settings: Settings) -> str:
    """An "ingest" run in the settings' experiment: the version as its output, counts as metrics."""
    import mlflow

    from cluster.registry import Registry

    registry = Registry(settings)
    registry.require_healthy()
    experiment_id = registry.ensure_experiment()
    counts = version.manifest.get("counts", {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"ingest-{version.name}-{version.version}",
                          tags={"rayline.job": "ingest", **tags(version)}) as run:
        log_dataset_input(version, context="ingest")
        mlflow.log_metrics({k: float(v) for k, v in counts.items() if isinstance(v, int | float)})
        mlflow.log_dict(version.manifest, "manifest.json")
        return run.info.run_id
