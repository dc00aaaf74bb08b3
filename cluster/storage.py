"""When a write fails because the filesystem is full or read-only, say so in one line.

Polars, torch and the OS report the same two problems very differently: ``OSError`` with
``errno`` ENOSPC/EROFS, Polars' "underlying IO error: No space left on device (os error 28)",
or torch's "unexpected pos 576 vs 534" for a short write. So the error's errno and text are
checked first, and then the filesystem itself is asked (read-only flag, bytes left).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.errors import RaylineError

FULL = "no space left on device"
READ_ONLY = "read-only file system"
NEARLY_FULL_BYTES = 1024**2  # below this many free bytes a failed write is put down to a full disk
_MARKERS = {FULL: ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122"),
            READ_ONLY: ("Read-only file system", "os error 30")}
_ERRNOS = {errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EROFS: READ_ONLY}


def existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a failed run may have removed its own folder)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def space(path: Path) -> tuple[int, int]:
    """(bytes free, bytes in all) on the filesystem holding ``path``."""
    st = os.statvfs(existing(path))
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def storage_problem(exc: BaseException, path: Path) -> str | None:
    """FULL or READ_ONLY when that is why a write under ``path`` failed, else None."""
    for cause in (exc, exc.__cause__, exc.__context__):
        if cause is None:
            continue
        if getattr(cause, "errno", None) in _ERRNOS:
            return _ERRNOS[cause.errno]  # type: ignore[attr-defined]
        text = str(cause)
        for problem, markers in _MARKERS.items():
            if any(m in text for m in markers):
                return problem
    if os.statvfs(existing(path)).f_flag & os.ST_RDONLY:
        return READ_ONLY
    if type(exc) is RuntimeError and space(path)[0] < NEARLY_FULL_BYTES:  # torch's short writes
        return FULL
    return None


def describe(problem: str, path: Path) -> str:
    """The problem, plus the free space when the disk is full ('… (12 KiB of 1.0 MiB free now)')."""
    if problem != FULL:
        return problem
    free, total = space(path)
    return f"{problem} ({_size(free)} of {_size(total)} free now)"


def remedy(problem: str) -> str:
    return "free space there" if problem == FULL else "make it writable"


@contextmanager
def storage_errors(path: Path, error: Callable[[str], RaylineError]) -> Iterator[None]:
    """Raise ``error(problem)`` instead when a write under ``path`` fails on a full or read-only filesystem.

    ``problem`` is FULL or READ_ONLY; ``describe`` and ``remedy`` word it.
    """
    try:
        yield
    except RaylineError:
        raise
    except Exception as exc:
        problem = storage_problem(exc, path)
        if problem is None:
            raise
        raise error(problem) from exc


def _size(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
