"""The driver side of a training job: validate, resolve data, build the TorchTrainer, fit, register.

Everything that can be wrong with the request (config fields, strategy, dataset version,
batch size vs. data) fails here, before a worker starts. The run's storage is
``settings.checkpoints_root / run_name``, a local folder or ``s3://`` (Ray Train's native
``storage_path``, with a ``storage_filesystem`` carrying the endpoint and keys): submitting
the same run name again makes Ray Train find the checkpoint manager snapshot there and
resume from the latest checkpoint — only when ``train.fingerprint`` finds it is the same job
(or the caller asked for a new run or to resume with changes);
``FailureConfig(max_failures)`` restarts the worker group from it after a worker dies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cluster import files
from cluster.errors import JobError
from cluster.registry import Registry
from cluster.settings import Settings
from models.registry import build_model
from train import fingerprint, tracking
from train.config import TrainConfig, TrainConfigError
from train.data import DataPlan, resolve_data, steps_per_epoch
from train.faults import FaultPlan
from train.loop import train_loop
from train.strategy import MODEL_FILE, strategy_class

log = logging.getLogger(__name__)


class TrainingFailedError(JobError):
    """Training did not finish (failures beyond max_failures, or an error in the train function)."""


def run_url(config: TrainConfig, settings: Settings) -> str:
    """Where the run's checkpoints, Ray's snapshot and the MLflow run id live (a path or a URL)."""
    return files.join(str(settings.checkpoints_root), config.run_name)


def run_dir(config: TrainConfig, settings: Settings) -> Path:
    """The run's local folder (test hooks' markers and progress): the run itself on a local root,
    else ``state_dir/runs/<run_name>``."""
    url = run_url(config, settings)
    return files.local_path(url) if files.is_local(url) else settings.state_dir / "runs" / config.run_name


def prepare(config: TrainConfig, settings: Settings) -> tuple[DataPlan, int]:
    """Driver-side checks that need the outside world; returns the data plan and optimizer steps per epoch."""
    accumulation = strategy_class(config).accumulation_steps(config)
    plan = resolve_data(config, settings)
    steps = steps_per_epoch(plan.rows["train"], config.batch_size, config.scaling.num_workers, accumulation)
    if steps == 0:
        raise TrainConfigError(
            f"invalid 'batch_size': {config.batch_size} × {config.scaling.num_workers} workers"
            f"{f' × {accumulation} accumulation steps' if accumulation > 1 else ''} is more than the "
            f"{plan.rows['train']} training rows")
    return plan, steps


def build_trainer(config: TrainConfig, settings: Settings, plan: DataPlan, steps: int,
                  tracking_info: dict[str, str] | None, fault: FaultPlan) -> Any:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker or 1
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True  # exact, resumable data order (see train.data)
    loop_config = {
        "config": config.model_dump(mode="json"), "spec": plan.spec.__dict__, "task": plan.task,
        "preprocessing": plan.preprocessing, "steps_per_epoch": steps,
        "accumulation_steps": strategy_class(config).accumulation_steps(config),
        "tracking": tracking_info, "fault": fault.to_dict(),
    }
    storage_filesystem, storage_path = files.arrow_filesystem(str(settings.checkpoints_root))
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=config.backend),
        # SPREAD: on several nodes each worker goes to another node where it can, so losing a node
        # costs the group one worker (restarted from the checkpoint), not all; on one node it is PACK.
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=resources, placement_strategy="SPREAD"),
        datasets=plan.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ingest),
        run_config=ray.train.RunConfig(
            name=config.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.checkpoint.keep,
                checkpoint_score_attribute=config.checkpoint.score_metric,
                checkpoint_score_order=config.checkpoint.score_mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.failure.max_failures),
        ),
    )


def load_trained_module(config: TrainConfig, plan: DataPlan, checkpoint: Any) -> torch.nn.Module:
    """The plain model from a checkpoint's exported state_dict (what every strategy writes)."""
    module = build_model(config.model.name, config.model.params, plan.spec)
    with checkpoint.as_directory() as directory:
        module.load_state_dict(torch.load(Path(directory) / MODEL_FILE, map_location="cpu"))
    return module.eval()


def input_example(plan: DataPlan, rows: int = 2) -> list[dict[str, Any]] | None:
    """Raw request records rebuilt from encoded validation rows (the model's input example)."""
    if plan.preprocessing is None:
        return None
    from models.preprocessing import Preprocessing

    pre = Preprocessing.from_dict(plan.preprocessing)
    records = []
    for row in plan.datasets["validation"].take(rows):
        record: dict[str, Any] = {}
        for feat in pre.features:
            if feat.kind == "numeric":
                record[feat.name] = float(row[feat.name])
            elif feat.encoding == "onehot":
                values = [row[c] for c in feat.model_columns]
                record[feat.name] = feat.vocabulary[max(range(len(values)), key=values.__getitem__)]
            else:
                record[feat.name] = feat.vocabulary[int(row[feat.model_columns[0]])]
        records.append(record)
    return records


def train(config: TrainConfig, settings: Settings, register: bool = True, *, new_run: bool = False,
          resume_with_changes: bool = False) -> tracking.Outcome:
    """Run a training job end to end; resumes when ``config.run_name`` has checkpoints of the same job.

    A run name submitted again with another fingerprint is refused (``fingerprint.RunChangedError``)
    unless ``new_run`` (start over) or ``resume_with_changes`` (audited in the MLflow run).
    """
    plan, steps = prepare(config, settings)
    url = run_url(config, settings)   # the fingerprint lives beside the checkpoints, local or s3://
    accumulation = strategy_class(config).accumulation_steps(config)
    with files.access(url, "record the run's fingerprint"):
        claim = fingerprint.claim(url, fingerprint.of(config, plan, accumulation), config.run_name,
                                  new_run=new_run, resume_with_changes=resume_with_changes)
    registry = Registry(settings)
    registry.require_healthy()
    with files.access(url, "store the run's checkpoints"):
        run_id = tracking.start_run(registry, config, plan, url)
    if claim.changes:
        tracking.record_changes(registry, run_id, claim.changes)
    fault = FaultPlan.from_env(run_dir(config, settings))
    trainer = build_trainer(config, settings, plan, steps,
                            {"uri": str(settings.mlflow_tracking_uri), "run_id": run_id}, fault)
    log.info("training", extra={"run_name": config.run_name, "run_id": run_id, "steps_per_epoch": steps})
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray's TrainingFailedError and friends carry the worker traceback
        raise TrainingFailedError(f"training run {config.run_name!r} failed: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                  ) from exc
    if result.checkpoint is None:
        raise TrainingFailedError(f"training run {config.run_name!r} finished without a checkpoint")
    module = load_trained_module(config, plan, result.checkpoint)
    outcome = tracking.Outcome(run_id=run_id, metrics=dict(result.metrics or {}), checkpoint=result.checkpoint.path,
                               kept_checkpoints=[c.path for c, _ in result.best_checkpoints or []])
    if not register:
        return outcome
    return tracking.finish(registry, config, plan, outcome, module, input_example(plan))
