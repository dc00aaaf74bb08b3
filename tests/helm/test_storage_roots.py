"""The chart's storage roots, fed to the real settings loader, open as storage the code writes to.

`helm template` renders for real; the environment of the Ray head container is then loaded by
``load_settings`` exactly as a pod would, and the catalog ingests through the resolved roots:
into a folder standing in for the PVC mount (`storage.type: pvc`), and into a bucket on moto's S3
server (`storage.type: s3`, the endpoint set in the values, the credentials Secret's keys filled
with the server's test pair, since no Kubernetes API resolves the `secretKeyRef` here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cluster import files
from cluster.settings import load_settings
from ingest.catalog import Catalog
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract, table, write_csv
from tests.storage.helpers import S3Server

SECRET_VALUES = {"access-key-id": "test", "secret-access-key": "test"}  # what the Secret would hold


def head_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The Ray head container's environment, secretKeyRefs replaced by the Secret's values."""
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = SECRET_VALUES.get(entry["valueFrom"]["secretKeyRef"]["key"], "")
    return env


def load_as_pod(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # -> Settings
    for key in [k for k in os.environ if k.startswith(("RAYLINE_", "AWS_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(("RAYLINE_", "AWS_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAYLINE_STATE_DIR", str(tmp_path / "state"))  # the pod's /tmp/rayline
    return load_settings()


def ingest_through(settings: Any, tmp_path: Path) -> str:
    version = run_ingest(write_csv(table(120), tmp_path / "a.csv"), contract(), "chart", str(settings.datasets_root),
                         settings=settings)
    assert Catalog(str(settings.datasets_root)).latest("chart").version == version.version
    return version.path


@pytest.mark.timeout(120)
def test_pvc_roots_resolve_to_folders_on_the_mount(renderer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "mnt" / "rayline"

    def pvc(values: dict[str, Any]) -> None:
        values["storage"]["pvc"]["mountPath"] = f"{mount}/"

    settings = load_as_pod(head_env(renderer.render(renderer.values(pvc))), tmp_path, monkeypatch)
    assert settings.datasets_root == f"{mount}/datasets" and settings.checkpoints_root == f"{mount}/checkpoints"
    assert settings.storage_root == str(mount)
    assert Path(ingest_through(settings, tmp_path)).is_relative_to(mount / "datasets" / "chart")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix", ["prod", "/team/prod/", ""])
def test_s3_roots_resolve_to_the_bucket_and_open_with_the_rendered_credentials(
        renderer, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    bucket = s3.bucket()

    def on_s3(values: dict[str, Any]) -> None:
        values["storage"]["type"] = "s3"
        values["storage"]["s3"].update(bucket=bucket, prefix=prefix, endpointUrl=s3.endpoint,
                                       region="us-east-1", credentialsSecret="rayline-s3")
        values["serving"]["state"]["existingClaim"] = "rayline-serve-state"

    settings = load_as_pod(head_env(renderer.render(renderer.values(on_s3))), tmp_path, monkeypatch)
    root = f"s3://{bucket}" + (f"/{prefix.strip('/')}" if prefix.strip("/") else "")
    assert (settings.storage_root, settings.datasets_root, settings.checkpoints_root) == (
        root, f"{root}/datasets", f"{root}/checkpoints")
    assert settings.s3_endpoint_url == s3.endpoint and settings.s3_region == "us-east-1"
    path = ingest_through(settings, tmp_path)
    assert path.startswith(f"{root}/datasets/chart/v-")
    files.check_writable(str(settings.checkpoints_root))
    fs, storage_path = files.arrow_filesystem(str(settings.checkpoints_root))
    assert fs is not None and storage_path == f"{root}/checkpoints".removeprefix("s3://")
