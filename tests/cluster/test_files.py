"""The one durable-write layer on a local disk: atomic replace and compare-and-swap pointers."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from cluster.files import WriteConflict, atomic_write, join, read_versioned, write_if
from tests.storage.helpers import bump


def test_join_keeps_url_slashes() -> None:
    assert join("s3://bucket/prefix/", "a", "/b") == "s3://bucket/prefix/a/b"
    assert join("/tmp/x", "y") == "/tmp/x/y"


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write(target, "one")
    atomic_write(f"file://{target}", b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_write_if_refuses_a_stale_token(tmp_path: Path) -> None:
    target = tmp_path / "LATEST"
    first = write_if(target, "v1", None)
    with pytest.raises(WriteConflict, match="exists"):
        write_if(target, "other", None)
    second = write_if(target, "v2", first)
    with pytest.raises(WriteConflict, match="changed"):
        write_if(target, "v3", first)
    assert read_versioned(target) == (b"v2", second)


def test_two_processes_racing_never_lose_an_increment(tmp_path: Path) -> None:
    counter = str(tmp_path / "counter")
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(bump, [counter, counter], [200, 200]))
    assert Path(counter).read_text() == "400"
