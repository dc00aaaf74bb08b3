"""One way to write files durably under any root: a local path, ``file://``, ``s3://`` or another fsspec URL.

Every part that persists something a later reader trusts (the dataset catalog, checkpoints,
rollout state, the stack record, serve records, reports) goes through these functions, so
there is one durability rule: on POSIX the file is fsynced, renamed into place and its folder
fsynced; on object storage a single PUT is already atomic.

Pointers that several writers may move (``LATEST``, a rollout's ``state.json``) use
:func:`read_versioned` and :func:`write_if`: a compare-and-swap on an opaque token (a content
hash locally, the object's ETag on S3), as Delta Lake and Iceberg commit. A writer whose token
is stale gets :class:`WriteConflict` and must reload before it acts again. On S3 the swap is
the server's own conditional PUT (``If-Match`` on the ETag, ``If-None-Match: *`` for the first
write), sent through s3fs's botocore client; a protocol with no such primitive is refused
rather than emulated.

Where S3 is: ``configure`` (called by the settings loader with ``s3_endpoint_url``,
``s3_region`` and the optional key pair); anything not configured comes from the standard
AWS chain (``AWS_*`` variables, shared config, IRSA web identity), as botocore resolves it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.errors import RaylineError

S3_ENDPOINT_ENV = "RAYLINE_S3_ENDPOINT_URL"


class WriteConflict(RaylineError):
    """A conditional write lost: someone else changed the file since the writer read it."""

    exit_code = 9


class StorageAccessError(RaylineError):
    """A storage root cannot be reached: no such bucket, wrong credentials, unsupported protocol."""

    exit_code = 10


@dataclass
class S3Config:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


_s3 = S3Config()
_memory_lock = threading.Lock()  # memory:// lives in this process, so a process lock is its CAS


def configure(endpoint_url: str | None = None, region: str | None = None, access_key_id: str | None = None,
              secret_access_key: str | None = None) -> None:
    """Where ``s3://`` URLs go; unset fields fall back to the AWS chain (and ``RAYLINE_S3_ENDPOINT_URL``)."""
    global _s3
    _s3 = S3Config(endpoint_url, region, access_key_id, secret_access_key)


def s3_config() -> S3Config:
    return S3Config(_s3.endpoint_url or os.environ.get(S3_ENDPOINT_ENV) or None, _s3.region,
                    _s3.access_key_id, _s3.secret_access_key)


def is_local(url: str | Path) -> bool:
    """True for plain paths and ``file://`` URLs."""
    text = str(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | Path) -> Path:
    """The filesystem path of a local URL (``file:///a/b`` -> ``/a/b``)."""
    text = str(url)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def protocol(url: str | Path) -> str:
    """``file`` for local paths, else the URL's scheme (``s3``, ``memory`` …)."""
    return "file" if is_local(url) else str(url).split("://", 1)[0]


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for paths and URLs alike (``Path('s3://b')`` would drop a slash)."""
    text = str(root).rstrip("/")
    return "/".join([text, *(p.strip("/") for p in parts)])


def token_of(data: bytes) -> str:
    """The token :func:`write_if` compares for a local file: a hash of its content."""
    return hashlib.sha256(data).hexdigest()


# -- filesystems -----------------------------------------------------------------------------

def fs_options(url: str | Path) -> dict[str, Any]:
    """fsspec options for ``url``'s protocol (S3: endpoint, region, keys; listings never cached).

    Listing caches are off: other processes and pods write the same prefixes.
    """
    if protocol(url) != "s3":
        return {}
    cfg = s3_config()
    client: dict[str, Any] = {}
    if cfg.endpoint_url:
        client["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        client["region_name"] = cfg.region
    options: dict[str, Any] = {"use_listings_cache": False, "client_kwargs": client}
    if cfg.access_key_id and cfg.secret_access_key:
        options.update(key=cfg.access_key_id, secret=cfg.secret_access_key)
    return options


def filesystem(url: str | Path) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for any root."""
    import fsspec

    if is_local(url):
        return fsspec.filesystem("file"), str(local_path(url).absolute())
    fs, path = fsspec.core.url_to_fs(str(url), **fs_options(url))
    return fs, path


def arrow_filesystem(url: str | Path) -> tuple[Any | None, str]:
    """(pyarrow filesystem, path) for Ray Train's ``storage_filesystem``/``storage_path``.

    None for local roots and for S3 without custom settings (pyarrow resolves those itself).
    Given a filesystem, Ray wants the path without its scheme.
    """
    if is_local(url):
        return None, str(local_path(url).absolute())
    if protocol(url) == "s3":
        cfg = s3_config()
        if not (cfg.endpoint_url or cfg.region or cfg.access_key_id):
            return None, str(url)
        from pyarrow import fs as pafs

        kwargs: dict[str, Any] = {}
        if cfg.endpoint_url:
            scheme, _, host = cfg.endpoint_url.partition("://")
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        if cfg.region:
            kwargs["region"] = cfg.region
        if cfg.access_key_id and cfg.secret_access_key:
            kwargs.update(access_key=cfg.access_key_id, secret_key=cfg.secret_access_key)
        return pafs.S3FileSystem(**kwargs), str(url).split("://", 1)[1]
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(url)
    return PyFileSystem(FSSpecHandler(fs)), path


def polars_options(url: str | Path) -> dict[str, str] | None:
    """Polars/object-store ``storage_options`` for reading Parquet under ``url``."""
    if protocol(url) != "s3":
        return None
    cfg = s3_config()
    opts: dict[str, str] = {}
    if cfg.endpoint_url:
        opts["aws_endpoint_url"] = cfg.endpoint_url
        if cfg.endpoint_url.startswith("http://"):
            opts["aws_allow_http"] = "true"
    if cfg.region:
        opts["aws_region"] = cfg.region
    if cfg.access_key_id and cfg.secret_access_key:
        opts.update(aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key)
    return opts or None


@contextlib.contextmanager
def access(url: str | Path, doing: str) -> Iterator[None]:
    """Turn a missing bucket, refused credentials or an unreachable endpoint into one line naming ``url``."""
    try:
        yield
    except RaylineError:
        raise
    except Exception as exc:
        reason = _access_reason(exc)
        if reason is None:
            raise
        raise StorageAccessError(f"{url}: cannot {doing}: {reason}") from exc


def _access_reason(exc: BaseException) -> str | None:
    text = " ".join(str(c) for c in (exc, exc.__cause__) if c is not None)
    code = _client_error_code(exc)
    if code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return "the bucket does not exist (create it, or fix the storage root)"
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"} \
            or isinstance(exc, PermissionError) or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return ("access denied: the credentials were refused (check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, the role, or the s3_* settings)")
    if "NoCredentials" in type(exc).__name__ or "Unable to locate credentials" in text:
        return "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a role)"
    if "EndpointConnectionError" in type(exc.__cause__ or exc).__name__ or "Could not connect" in text:
        return f"the endpoint does not answer ({s3_config().endpoint_url or 'AWS default'})"
    return None


def _client_error_code(exc: BaseException) -> str | None:
    for cause in (exc, exc.__cause__, exc.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
    return None


def check_writable(url: str | Path) -> None:
    """Fail fast, naming ``url``, when its bucket or credentials are wrong (before any work is done)."""
    if is_local(url):
        return
    fs, path = filesystem(url)
    with access(url, "write there"):
        if protocol(url) == "s3":
            fs.ls(path.split("/", 1)[0], detail=False)  # the bucket itself: NoSuchBucket / AccessDenied here
        else:
            fs.exists(path)


# -- plain reads and writes -------------------------------------------------------------------

def atomic_write(url: str | Path, data: bytes | str) -> None:
    """Write ``data`` so a reader sees the old content or the new, never a torn file."""
    payload = data.encode() if isinstance(data, str) else data
    if not is_local(url):
        fs, path = filesystem(url)
        with access(url, "write"):
            fs.pipe_file(path, payload)  # one PUT: atomic on object storage
        return
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


def read_bytes(url: str | Path) -> bytes | None:
    """The file's content, or None when there is none."""
    found = read_versioned(url)
    return None if found is None else found[0]


def exists(url: str | Path) -> bool:
    if is_local(url):
        return local_path(url).exists()
    fs, path = filesystem(url)
    with access(url, "read"):
        return bool(fs.exists(path))


def listdir(url: str | Path) -> list[str]:
    """Names directly under ``url`` (files and folders), empty when it does not exist."""
    fs, path = filesystem(url)
    with access(url, "list"):
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != path.rstrip("/")})


def remove_tree(url: str | Path) -> None:
    """Delete ``url`` and everything under it; nothing there is fine."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError), access(url, "delete"):
        fs.rm(path, recursive=True)


def upload_tree(local_dir: Path, url: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under ``local_dir`` to ``url`` (relative names kept); returns them."""
    names = [str(p.relative_to(local_dir)) for p in sorted(local_dir.rglob("*"))
             if p.is_file() and p.name not in skip]
    fs, path = filesystem(url)
    with access(url, "write"):
        for name in names:
            fs.put_file(str(local_dir / name), f"{path.rstrip('/')}/{name}")
    return names


def download_tree(url: str | Path, local_dir: Path) -> None:
    """Copy everything under ``url`` into ``local_dir``."""
    fs, path = filesystem(url)
    with access(url, "read"):
        for remote in fs.find(path):
            target = local_dir / remote[len(path.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))


# -- versioned pointers -----------------------------------------------------------------------

def read_versioned(url: str | Path) -> tuple[bytes, str] | None:
    """(content, token) of the file, or None when there is none."""
    if is_local(url):
        try:
            data = local_path(url).read_bytes()
        except FileNotFoundError:
            return None
        return data, token_of(data)
    fs, path = filesystem(url)
    with access(url, "read"):
        if protocol(url) == "s3":
            return _s3_get(fs, path)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        return data, token_of(data)


def write_if(url: str | Path, data: bytes | str, token: str | None) -> str:
    """Replace the file only if it still has ``token`` (None: only if it does not exist yet).

    Returns the new token. Raises :class:`WriteConflict` when the file changed in between.
    """
    payload = data.encode() if isinstance(data, str) else data
    if protocol(url) == "s3":
        fs, path = filesystem(url)
        with access(url, "write"):
            return _s3_put_if(fs, path, payload, token, str(url))
    if protocol(url) not in {"file", "memory"}:
        raise StorageAccessError(f"{url}: conditional writes need a local path or s3:// "
                                 f"({protocol(url)}:// has no compare-and-swap here)")
    lock = _locked(local_path(url)) if is_local(url) else _memory_locked()
    with lock:
        current = read_versioned(url)
        current_token = None if current is None else current[1]
        if current_token != token:
            raise WriteConflict(_conflict(url, token, current_token is None))
        atomic_write(url, payload)
    return token_of(payload)


def _conflict(url: str | Path, token: str | None, gone: bool) -> str:
    state = "exists" if token is None else ("is gone" if gone else "changed")
    return f"{url}: {state} since it was read; reload before writing again"


def _s3_get(fs: Any, path: str) -> tuple[bytes, str] | None:
    """Body and ETag from ONE GetObject, so the token always belongs to the bytes returned."""
    from fsspec.asyn import sync

    bucket, key = path.split("/", 1)

    async def get() -> tuple[bytes, str] | None:
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        async with response["Body"] as body:
            return await body.read(), str(response["ETag"])

    return sync(fs.loop, get)


def _s3_put_if(fs: Any, path: str, payload: bytes, token: str | None, url: str) -> str:
    """PutObject with ``If-Match: token`` or ``If-None-Match: *``; a 412/409 is a lost race."""
    bucket, key = path.split("/", 1)
    condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=payload, **condition)
    except (OSError, FileExistsError) as exc:
        code = _client_error_code(exc)
        if code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"} \
                or isinstance(exc, FileExistsError):
            raise WriteConflict(_conflict(url, token, code == "NoSuchKey")) from None
        if token is not None and (code == "NoSuchKey" or isinstance(exc, FileNotFoundError)):
            raise WriteConflict(_conflict(url, token, True)) from None
        raise
    return str(response["ETag"])


@contextlib.contextmanager
def _memory_locked() -> Iterator[None]:
    with _memory_lock:
        yield


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
