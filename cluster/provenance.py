"""Where code came from: the git commit and a dirty flag, recorded on runs and model versions (lineage).

Ray uploads a job's working dir without ``.git``, so a job cannot ask git. Three ways, in order:

1. ``RAYLINE_GIT_COMMIT`` / ``RAYLINE_GIT_DIRTY``: rayline's own submissions resolve both on the
   submitting side at submission time and pass them in the job's environment.
2. ``git`` itself, when the code runs in a checkout (local runs, tests).
3. The source stamp ``.rayline-source`` in the uploaded tree, for plain ``ray job submit --working-dir .``:
   the commit and the git blob id of every tracked file, written by rayline (``rayline env``, ``up``,
   every submission) and hidden from ``git status`` through ``.git/info/exclude`` (Ray reads
   ``.gitignore``, not that file, so the stamp travels with the upload). The job compares the uploaded
   files with the stamp's blob ids, so "dirty" describes the code that really arrived: edited or untracked
   files make it dirty, and so does a stamp older than the last commit (never a wrong "clean").
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT_COMMIT_ENV = "RAYLINE_GIT_COMMIT"
GIT_DIRTY_ENV = "RAYLINE_GIT_DIRTY"
STAMP_FILE = ".rayline-source"
UNKNOWN = "unknown"
ROOT = Path(__file__).resolve().parents[1]   # the tree the code runs from (a checkout, or Ray's upload)
_RUNTIME_ONLY = {"__pycache__"}             # written by Python after the upload: not part of the source


@dataclass(frozen=True)
class Source:
    commit: str
    dirty: bool | None   # None: cannot tell
    how: str             # env | git | stamp | unknown

    def tags(self) -> dict[str, str]:
        """Lineage tags for MLflow runs and model versions."""
        dirty = UNKNOWN if self.dirty is None else str(self.dirty).lower()
        return {"git_commit": self.commit, "git_dirty": dirty, "git_source": self.how}


def _git(cwd: str | Path | None, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def from_git(cwd: str | Path | None = None) -> Source | None:
    """Commit and dirty flag from a git checkout (untracked files count: they would be uploaded too)."""
    head = _git(cwd, "rev-parse", "HEAD")
    if head is None:
        return None
    status = _git(cwd, "status", "--porcelain")
    return Source(head.strip(), None if status is None else bool(status.strip()), "git")


def blob_id(data: bytes) -> str:
    """Git's object id of a file's content (what ``git ls-tree`` lists), computed without git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_stamp(root: str | Path = ROOT) -> Path | None:
    """Write ``.rayline-source`` (commit + tracked blob ids) into the checkout at ``root``; None outside one."""
    root = Path(root)
    head, listing = _git(root, "rev-parse", "HEAD"), _git(root, "ls-tree", "-r", "HEAD")   # relative to root
    if head is None or listing is None:
        return None
    files = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        mode, kind, oid = meta.split()
        if kind == "blob" and mode != "120000":   # symlinks are uploaded as what they point at
            files[path] = oid
    stamp = root / STAMP_FILE
    stamp.write_text(json.dumps({"commit": head.strip(), "files": files}, sort_keys=True))
    _hide_from_git(root)
    return stamp


def _hide_from_git(root: Path) -> None:
    exclude = _git(root, "rev-parse", "--git-path", "info/exclude")
    if exclude is None:
        return
    path = Path(exclude.strip())
    path = path if path.is_absolute() else root / path
    lines = path.read_text().splitlines() if path.is_file() else []
    if f"/{STAMP_FILE}" not in lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(f"/{STAMP_FILE}\n")


def from_stamp(root: str | Path = ROOT) -> Source | None:
    """Commit from the stamp; dirty when an uploaded file differs from, or is missing in, the stamped commit.

    Tracked files that did not arrive are not counted: the uploader may leave some out on purpose
    (rayline's excludes, ``.gitignore``'d tracked files).
    """
    root = Path(root)
    try:
        stamp = json.loads((root / STAMP_FILE).read_text())
        commit, files = str(stamp["commit"]), dict(stamp["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    dirty = False
    for path in _uploaded_files(root):
        rel = path.relative_to(root).as_posix()
        if rel == STAMP_FILE:
            continue
        if files.get(rel) != blob_id(path.read_bytes()):
            dirty = True
            break
    return Source(commit, dirty, "stamp")


def _uploaded_files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _RUNTIME_ONLY and d != ".git"]
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def source(cwd: str | None = None) -> Source:
    """Where the running code came from: the submitter's word, else git, else the stamp, else unknown."""
    if os.environ.get(GIT_COMMIT_ENV):
        dirty = os.environ.get(GIT_DIRTY_ENV, "")
        return Source(os.environ[GIT_COMMIT_ENV], {"true": True, "false": False}.get(dirty), "env")
    return from_git(cwd or ROOT) or from_stamp(Path(cwd) if cwd else ROOT) or Source(UNKNOWN, None, UNKNOWN)


def git_commit(cwd: str | Path | None = None) -> str:
    """The source commit (see :func:`source`)."""
    return source(None if cwd is None else str(cwd)).commit


def submission_env(working_dir: str | Path | None) -> dict[str, str]:
    """What a job submitted from ``working_dir`` is told about its source, resolved now (and stamped in the tree)."""
    root = Path(working_dir or ".").resolve()
    write_stamp(root)
    found = source(str(root))
    if found.how == UNKNOWN:
        return {}
    return {GIT_COMMIT_ENV: found.commit, GIT_DIRTY_ENV: "unknown" if found.dirty is None else str(found.dirty).lower()}
