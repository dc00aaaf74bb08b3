"""The durable-write layer on a real S3 API (moto's server, a separate process): the same calls as on disk.

Compare-and-swap is the server's conditional PUT (If-Match on the ETag, If-None-Match: * for the
first write); these tests would pass a client that only checked the ETag itself only until two
writers raced, which the two-process test makes them do.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from cluster import files
from cluster.files import StorageAccessError, WriteConflict, atomic_write, read_versioned, write_if
from tests.storage.helpers import S3Server, bump

pytestmark = pytest.mark.timeout(120)


def test_write_if_on_s3_is_a_conditional_put_on_the_etag(s3: S3Server) -> None:
    bucket = s3.bucket()
    url = f"s3://{bucket}/ds/LATEST"
    assert read_versioned(url) is None
    first = write_if(url, "v1", None)
    assert first == s3.client().head_object(Bucket=bucket, Key="ds/LATEST")["ETag"]
    with pytest.raises(WriteConflict, match="exists since it was read"):
        write_if(url, "other", None)
    second = write_if(url, "v2", first)
    with pytest.raises(WriteConflict, match="changed since it was read"):
        write_if(url, "v3", first)
    assert read_versioned(url) == (b"v2", second)


def test_atomic_write_and_listing_behave_as_on_disk(s3: S3Server) -> None:
    root = f"s3://{s3.bucket()}/reports"
    atomic_write(files.join(root, "a", "summary.md"), "one")
    atomic_write(files.join(root, "a", "summary.md"), b"two")
    atomic_write(files.join(root, "b.csv"), "x")
    assert files.read_bytes(files.join(root, "a", "summary.md")) == b"two"
    assert files.listdir(root) == ["a", "b.csv"]
    files.remove_tree(files.join(root, "a"))
    assert files.listdir(root) == ["b.csv"] and not files.exists(files.join(root, "a", "summary.md"))


def test_two_processes_racing_on_s3_never_lose_an_increment(s3: S3Server) -> None:
    url = f"s3://{s3.bucket()}/counter"
    with ProcessPoolExecutor(2) as pool:
        lost = list(pool.map(bump, [url, url], [40, 40], [s3.endpoint] * 2))
    assert files.read_bytes(url) == b"80"
    assert sum(lost) > 0, "the writers never overlapped: the test proved nothing"


def test_a_missing_bucket_is_one_line_naming_the_url(s3: S3Server) -> None:
    with pytest.raises(StorageAccessError, match=r"^s3://no-such-bucket-x/ds/LATEST: cannot write: the bucket does "
                                                 r"not exist"):
        write_if("s3://no-such-bucket-x/ds/LATEST", "v1", None)
    with pytest.raises(StorageAccessError, match=r"^s3://no-such-bucket-x/ds: cannot write there"):
        files.check_writable("s3://no-such-bucket-x/ds")


def test_memory_urls_work_and_protocols_without_compare_and_swap_are_refused() -> None:
    url = "memory://rayline-test/ds/LATEST"
    token = write_if(url, "v1", None)
    with pytest.raises(WriteConflict):
        write_if(url, "v2", None)
    assert write_if(url, "v2", token) and files.read_bytes(url) == b"v2"
    with pytest.raises(StorageAccessError, match=r"^gcs://b/LATEST: conditional writes need a local path or s3://"):
        write_if("gcs://b/LATEST", "v1", None)
