"""Sources on S3: the same job reads ``s3://`` globs through an S3-compatible endpoint setting.

No S3 service runs here, so the endpoint is moto's standalone S3 server (the session's
``s3_server`` fixture, a separate process): a real HTTP server speaking the S3 API
(ListObjectsV2, GetObject with ranges, ETags), reached over the network by fsspec/s3fs
(listing, checksums) and by Polars' object store (the scan).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.settings import load_settings
from ingest.errors import SourceError
from ingest.pipeline import run_ingest
from tests.ingest.helpers import contract, table, write_csv
from tests.storage.helpers import S3Server

BUCKET = "raw"


@pytest.fixture
def s3_endpoint(s3: S3Server) -> str:
    s3.client().create_bucket(Bucket=BUCKET)
    return s3.endpoint


def _upload(endpoint: str, files: list[Path], prefix: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    for f in files:
        s3.upload_file(str(f), BUCKET, f"{prefix}/{f.name}")


def test_an_s3_glob_ingests_like_the_same_files_on_disk(tmp_path: Path, root: str, s3_endpoint: str) -> None:
    parts = [Path(write_csv(part, tmp_path / f"part-{i}.csv")) for i, part in enumerate(table(600).iter_slices(200))]
    _upload(s3_endpoint, parts, "customers/2026-11-23")
    settings = load_settings(state_dir=tmp_path / "state", s3_endpoint_url=s3_endpoint)

    remote = run_ingest(f"s3://{BUCKET}/customers/2026-11-23/part-*.csv", contract(), "s3", root, settings=settings)
    local = run_ingest(str(tmp_path / "part-*.csv"), contract(), "local", root, settings=settings)

    assert remote.manifest["counts"] == local.manifest["counts"]
    assert remote.manifest["counts"]["rows_in"] == 600
    sources = remote.manifest["sources"]
    assert [s["path"] for s in sources] == [f"s3://{BUCKET}/customers/2026-11-23/part-{i}.csv" for i in range(3)]
    assert all(s["checksum"].startswith("etag:") for s in sources)
    assert remote.lazy().collect().sort("id").equals(local.lazy().collect().sort("id"))


def test_an_s3_glob_matching_nothing_is_a_clear_source_error(tmp_path: Path, root: str, s3_endpoint: str) -> None:
    _upload(s3_endpoint, [Path(write_csv(table(10), tmp_path / "t.csv"))], "other")
    settings = load_settings(state_dir=tmp_path / "state", s3_endpoint_url=s3_endpoint)
    with pytest.raises(SourceError, match=r"s3://raw/customers/\*\.csv: no files match"):
        run_ingest(f"s3://{BUCKET}/customers/*.csv", contract(), "s3", root, settings=settings)
    assert not list(Path(root).glob("s3*"))  # nothing written
