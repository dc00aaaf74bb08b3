"""Ingest → train → register → serve with the datasets and checkpoints on ``s3://`` (moto's S3 server).

Everything is real: the catalog publishes into a bucket, Ray Train (2 CPU workers, gloo) writes
its checkpoints there through its own ``storage_filesystem``, a worker hard-exits mid-run and the
restarted group resumes from the checkpoint read back from S3; the latest checkpoint is then
damaged in the bucket and a resubmit of the run falls back to the one before it; the model is
registered in the session's MLflow server and served by Ray Serve over HTTP. MLflow's own
artifact store stays local (the server's), as in the demo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.registry import Registry
from cluster.settings import load_settings
from ingest.catalog import Catalog
from ingest.pipeline import run_ingest
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV
from tests.serve.helpers import running_app
from tests.storage.helpers import S3Server
from train.checkpoint import CHECKPOINT_PREFIX, checkpoint_step
from train.config import parse_config
from train.faults import FAIL_AT_STEP_ENV
from train.fingerprint import FINGERPRINT_FILE
from train.strategy import MODEL_FILE
from train.trainer import run_url, train

MODEL = "customers-on-s3"
FAIL_AT = 12  # rank 1 hard-exits before step 12; checkpoints every 5 steps: it resumes from 5 or 10
# (10 unless the controller saw the death before it had registered step 10's report)


def _config(epochs: int):  # -> TrainConfig
    return parse_config({
        "run_name": "customers-on-s3", "seed": 1,
        "model": {"name": "tabular_mlp", "params": {"hidden": [32]}},
        "data": {"dataset": "customers", "version": "latest"},
        "optimizer": {"name": "adamw", "lr": 0.01}, "batch_size": 64, "epochs": epochs,
        "checkpoint": {"every_steps": 5, "keep": 2, "score_metric": "val_accuracy", "score_mode": "max"},
        "failure": {"max_failures": 1},
        "registration": {"model_name": MODEL, "metric": "val_accuracy", "threshold": 0.5, "mode": "max",
                         "alias": "challenger"},
    })


def _checkpoints(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", Delimiter="/")
    names = [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in listed.get("CommonPrefixes", [])]
    return sorted(n for n in names if n.startswith(CHECKPOINT_PREFIX))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ingest_train_with_a_killed_worker_register_and_serve_on_s3(ray_cluster, settings, serve_url, s3: S3Server,
                                                                     tmp_path: Path, monkeypatch) -> None:
    bucket = s3.bucket()
    on_s3 = load_settings(state_dir=tmp_path / "state", mlflow_tracking_uri=settings.mlflow_tracking_uri,
                          storage_root=f"s3://{bucket}/rayline", s3_endpoint_url=s3.endpoint, log_format="text",
                          s3_access_key_id="test", s3_secret_access_key="test")  # Ray's workers lack AWS_* here
    assert on_s3.datasets_root == f"s3://{bucket}/rayline/datasets"

    version = run_ingest(str(CUSTOMERS_CSV), CUSTOMERS_CONTRACT, "customers", str(on_s3.datasets_root),
                         settings=on_s3)
    assert Catalog(str(on_s3.datasets_root)).latest("customers").version == version.version

    # 1. a worker dies at step 12; Ray Train restarts the group from the checkpoint on S3
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(FAIL_AT))
    first = train(_config(epochs=2), on_s3, register=False)
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    assert first.metrics["resumed_from_step"] in (5, 10)
    assert first.metrics["steps_this_attempt"] == first.metrics["step"] - first.metrics["resumed_from_step"]
    assert str(first.checkpoint).startswith(f"{bucket}/rayline/checkpoints/customers-on-s3/")
    prefix = run_url(_config(2), on_s3).removeprefix(f"s3://{bucket}/")
    kept = _checkpoints(s3, bucket, prefix)
    assert set(kept) == {Path(p).name for p in first.kept_checkpoints} | {Path(str(first.checkpoint)).name}
    assert 2 <= len(kept) <= 3  # keep-2 by val_accuracy, and the latest always

    # 2. the latest checkpoint is damaged in the bucket: a resubmit resumes from the one before it
    latest, previous = kept[-1], kept[-2]
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{latest}/{MODEL_FILE}", Body=b"torn upload")
    # one more epoch is a changed fingerprint (kept beside the checkpoints in the bucket): resumed only when asked
    assert s3.client().get_object(Bucket=bucket, Key=f"{prefix}/{FINGERPRINT_FILE}")["Body"].read()
    second = train(_config(epochs=3), on_s3, resume_with_changes=True)
    assert second.metrics["resumed_from_step"] == checkpoint_step(previous)
    assert second.registered is not None and second.registered.aliases == ("challenger",)

    # 3. serve it over HTTP
    Registry(on_s3).set_alias(MODEL, "champion", second.registered.version)
    record = {"age": 73, "tenure_months": 16.0, "monthly_charges": 63.18, "plan": "standard", "region": "east"}
    with running_app(serve_url, on_s3, MODEL) as app:
        response = app.predict([record])
        assert response.status_code == 200, response.text
        assert json.loads(response.text)["predictions"]
