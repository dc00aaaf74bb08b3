"""Storage test helpers: moto's standalone S3 server as a separate process (tests/conftest.py's fixtures use
it) and a counter that racing processes bump through compare-and-swap."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from cluster import files
from cluster.processes import free_port, session_members, start_detached, tcp_reachable, terminate, wait_until

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's standalone S3 server (``python -m moto.server``): a real HTTP S3 API on 127.0.0.1.

    Credentials are the fixed ``test`` pair moto accepts; buckets are made per test (unique names).
    """

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = start_detached([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                   log_dir / f"moto-{self.port}.log", env=env)
        if not wait_until(lambda: tcp_reachable("127.0.0.1", self.port, 0.2), timeout_s=60):
            self.stop()
            raise RuntimeError(f"moto S3 server did not come up on port {self.port}")

    def client(self, **credentials: str) -> Any:
        """A boto3 S3 client for this server (test-side setup: buckets, uploads, corruption)."""
        import boto3

        keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test", **credentials}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    def bucket(self, prefix: str = "rayline") -> str:
        """A fresh empty bucket; its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        terminate(session_members(self.proc.pid), grace_s=5)
        self.proc.wait(timeout=10)


def bump(url: str, times: int, endpoint: str | None = None) -> int:
    """Increment a counter file ``times`` times by read + conditional write, retrying lost races.

    Returns how many races this process lost. ``endpoint``: the S3 server (a pool worker's env may predate it).
    """
    if endpoint:
        os.environ[files.S3_ENDPOINT_ENV] = endpoint
    lost = 0
    for _ in range(times):
        while True:
            data, token = files.read_versioned(url) or (b"0", None)
            try:
                files.write_if(url, str(int(data) + 1), token)
                break
            except files.WriteConflict:
                lost += 1
    return lost
