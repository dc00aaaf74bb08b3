"""One way to write files durably under any root: a local path, ``file://`` or ``s3://``.

Every part that persists something a later reader trusts (the dataset catalog, checkpoints,
rollout state, the stack record, serve records, reports) goes through these functions, so
there is one durability rule: on POSIX the file is fsynced, renamed into place and its folder
fsynced; on object storage a single PUT is already atomic.

Pointers that several writers may move (``LATEST``, a rollout's ``state.json``) use
:func:`read_versioned` and :func:`write_if`: a compare-and-swap on an opaque token (a content
hash locally, the object's ETag on S3), as Delta Lake and Iceberg commit. A writer whose token
is stale gets :class:`WriteConflict` and must reload before it acts again.

This module is the interface; the local implementation is complete, object storage is served
through ``fsspec``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cluster.errors import RaylineError


class WriteConflict(RaylineError):
    """A conditional write lost: someone else changed the file since the writer read it."""

    exit_code = 9


def is_local(url: str | Path) -> bool:
    """True for plain paths and ``file://`` URLs."""
    text = str(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | Path) -> Path:
    """The filesystem path of a local URL (``file:///a/b`` -> ``/a/b``)."""
    text = str(url)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for paths and URLs alike (``Path('s3://b')`` would drop a slash)."""
    text = str(root).rstrip("/")
    return "/".join([text, *(p.strip("/") for p in parts)])


def token_of(data: bytes) -> str:
    """The token :func:`write_if` compares for a local file: a hash of its content."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(url: str | Path, data: bytes | str) -> None:
    """Write ``data`` so a reader sees the old content or the new, never a torn file."""
    payload = data.encode() if isinstance(data, str) else data
    if not is_local(url):
        raise NotImplementedError(f"{url}: object storage writes are not wired yet")
    path = local_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive a crash (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_versioned(url: str | Path) -> tuple[bytes, str] | None:
    """(content, token) of the file, or None when there is none."""
    if not is_local(url):
        raise NotImplementedError(f"{url}: object storage reads are not wired yet")
    try:
        data = local_path(url).read_bytes()
    except FileNotFoundError:
        return None
    return data, token_of(data)


def write_if(url: str | Path, data: bytes | str, token: str | None) -> str:
    """Replace the file only if it still has ``token`` (None: only if it does not exist yet).

    Returns the new token. Raises :class:`WriteConflict` when the file changed in between.
    """
    payload = data.encode() if isinstance(data, str) else data
    if not is_local(url):
        raise NotImplementedError(f"{url}: object storage conditional writes are not wired yet")
    path = local_path(url)
    with _locked(path):
        current = read_versioned(path)
        current_token = None if current is None else current[1]
        if current_token != token:
            state = "exists" if token is None else ("is gone" if current_token is None else "changed")
            raise WriteConflict(f"{url}: {state} since it was read; reload before writing again")
        atomic_write(path, payload)
    return token_of(payload)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (flock: held across processes on this host and on NFSv4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
