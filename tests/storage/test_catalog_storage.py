"""The dataset catalog on S3 (moto's server, a separate process) and on a shared local folder.

A version is published when its manifest (written last, with every file's sha256) exists; LATEST
moves by compare-and-swap; two ingests racing from two processes both land; a missing bucket or
refused credentials stop the job in one line before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from cluster import files
from cluster.processes import wait_until
from ingest.catalog import MANIFEST, STAGING_PREFIX, Catalog
from ingest.pipeline import run_ingest
from tests.ingest.helpers import ROOT, contract, table, write_csv
from tests.storage.helpers import S3Server

pytestmark = pytest.mark.timeout(180)
DATASET = "customers"


def assert_complete(catalog: Catalog, version: str) -> None:
    """Every file the manifest vouches for is there with its sha256, and the version reads whole."""
    v = catalog.get(DATASET, version)
    for name, digest in v.manifest["checksums"].items():
        data = files.read_bytes(files.join(v.path, name))
        assert data is not None and hashlib.sha256(data).hexdigest() == digest, name
    assert v.lazy().collect().height == v.manifest["counts"]["rows_out"] > 0


def test_an_s3_catalog_publishes_what_a_local_one_does(tmp_path: Path, s3: S3Server) -> None:
    src = write_csv(table(500), tmp_path / "a.csv")
    remote_root = f"s3://{s3.bucket()}/datasets"
    remote = run_ingest(src, contract(), DATASET, remote_root)
    local = run_ingest(src, contract(), DATASET, str(tmp_path / "catalog"))

    assert remote.version == local.version and remote.path == f"{remote_root}/{DATASET}/{remote.version}"
    catalog = Catalog(remote_root)
    assert catalog.versions(DATASET) == [remote.version] and catalog.latest(DATASET).version == remote.version
    assert_complete(catalog, remote.version)
    assert remote.manifest["checksums"] == local.manifest["checksums"]
    assert catalog.latest(DATASET).lazy().collect().sort("id").equals(local.lazy().collect().sort("id"))
    assert not list(Path.cwd().glob("s3:*")), "an s3:// root must never become a local folder"


def test_readers_ignore_a_version_without_manifest_and_stale_uploads_are_removed(tmp_path: Path,
                                                                                s3: S3Server) -> None:
    bucket = s3.bucket()
    root = f"s3://{bucket}/datasets"
    published = run_ingest(write_csv(table(300), tmp_path / "a.csv"), contract(), DATASET, root)
    s3.client().put_object(Bucket=bucket, Key=f"datasets/{DATASET}/v-0123456789ab/split=train/part-00000.parquet",
                           Body=b"half an upload")
    catalog = Catalog(root)
    assert catalog.versions(DATASET) == [published.version]
    assert catalog.clean_stale(DATASET) == []  # fresh: maybe a live run on another pod
    assert catalog.clean_stale(DATASET, stale_after_s=-1) == ["v-0123456789ab"]
    assert catalog.versions(DATASET) == [published.version]
    assert_complete(catalog, published.version)


def test_local_staging_is_judged_by_owner_and_age_not_by_this_hosts_pids(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    directory = tmp_path / "catalog" / DATASET
    other_pod = directory / f"{STAGING_PREFIX}{os.getpid() + 1_000_000}@another-pod-7f9c-ab12cd34"
    dead_here = directory / f"{STAGING_PREFIX}{_dead_pid()}@{socket.gethostname()}-ab12cd35"
    for folder in (other_pod, dead_here):
        (folder / "split=train").mkdir(parents=True)
        (folder / "split=train" / "part-00000.parquet").write_bytes(b"x")
    assert catalog.clean_stale(DATASET) == [dead_here.name]
    assert other_pod.is_dir(), "another pod's live run was deleted"
    old = time.time() - 2 * 24 * 3600
    for path in (other_pod, *other_pod.rglob("*")):
        os.utime(path, (old, old))
    assert catalog.clean_stale(DATASET) == [other_pod.name]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


RACER = """
import sys, time
from pathlib import Path
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract
go = Path(sys.argv[3])
(go.parent / f"ready-{sys.argv[1].rsplit('/', 1)[-1]}").touch()
while not go.exists():
    time.sleep(0.005)
print(run_ingest(sys.argv[1], contract(), "customers", sys.argv[2]).version)
"""


@pytest.mark.parametrize("content", ["different", "same"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_ingests_racing_both_land_and_latest_names_one(tmp_path: Path, s3: S3Server, where: str,
                                                           content: str) -> None:
    root = str(tmp_path / "shared") if where == "local" else f"s3://{s3.bucket()}/datasets"
    first = run_ingest(write_csv(table(200, seed=9), tmp_path / "first.csv"), contract(), DATASET, root)
    sources = [write_csv(table(400, seed=1), tmp_path / "a.csv"),
               write_csv(table(400, seed=1 if content == "same" else 2), tmp_path / "b.csv")]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, src, root, str(go)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for src in sources]
    ready = [tmp_path / f"ready-{Path(src).name}" for src in sources]
    assert wait_until(lambda: all(r.exists() for r in ready), timeout_s=60), "the racers never got ready"
    go.touch()  # both imported and waiting: they start the same instant
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    raced = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(raced) == (1 if content == "same" else 2)

    catalog = Catalog(root)
    assert set(catalog.versions(DATASET)) == {first.version, *raced}  # nothing published was lost
    for version in catalog.versions(DATASET):
        assert_complete(catalog, version)
    assert catalog.latest_version(DATASET) in raced
    if where == "local":
        assert not list((tmp_path / "shared" / DATASET).glob(f"{STAGING_PREFIX}*"))


def _ingest_cli(tmp_path: Path, root: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    src = write_csv(table(100), tmp_path / "a.csv")
    spec = tmp_path / "contract.json"
    spec.write_text(json.dumps(contract()))
    return subprocess.run([sys.executable, "-m", "jobs.ingest", "--source", src, "--contract", str(spec),
                           "--dataset", DATASET, "--root", root], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RAYLINE_LOG_FORMAT": "text", **env},
                          timeout=120)


def assert_one_line_failure(done: subprocess.CompletedProcess[str], url: str, reason: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert url in line and reason in line, done.stderr[-2000:]


def test_a_missing_bucket_stops_the_ingest_in_one_line_before_writing(tmp_path: Path, s3: S3Server) -> None:
    done = _ingest_cli(tmp_path, "s3://no-such-bucket-y/datasets", {})
    assert_one_line_failure(done, "s3://no-such-bucket-y/datasets", "the bucket does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "contract.json"]  # no local 's3:' folder


def test_refused_credentials_stop_the_ingest_in_one_line_and_write_nothing(tmp_path: Path) -> None:
    """A second moto server that checks signatures (``INITIAL_NO_AUTH_ACTION_COUNT``): the first three
    calls make a user with an S3 policy and a key, every later call must be signed by a known key."""
    server = S3Server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
        iam.create_user(UserName="rayline")
        iam.put_user_policy(UserName="rayline", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="rayline")["AccessKey"]
        good = server.client(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        good.create_bucket(Bucket="guarded")
        done = _ingest_cli(tmp_path, "s3://guarded/datasets", {
            "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_DEFAULT_REGION": "us-east-1",
            files.S3_ENDPOINT_ENV: server.endpoint})
        assert_one_line_failure(done, "s3://guarded/datasets", "access denied: the credentials were refused")
        assert good.list_objects_v2(Bucket="guarded").get("KeyCount") == 0
    finally:
        server.stop()


def test_quarantine_and_splits_read_back_from_s3(tmp_path: Path, s3: S3Server) -> None:
    df = table(300).with_columns(pl.when(pl.col("id") == "K5").then(pl.lit("zzz")).otherwise(pl.col("cat"))
                                 .alias("cat"))
    bucket = s3.bucket()
    v = run_ingest(write_csv(df, tmp_path / "a.csv"), contract(), DATASET, f"s3://{bucket}/datasets")
    q = v.quarantine()
    assert q is not None and q.collect()["id"].to_list() == ["K5"]
    assert v.lazy("train").collect().height + v.lazy("validation").collect().height == 299
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    prefix = f"datasets/{DATASET}/{v.version}"
    assert {f"{prefix}/{MANIFEST}", f"datasets/{DATASET}/LATEST"} <= keys
    assert {f"{prefix}/{name}" for name in v.manifest["checksums"]} <= keys
