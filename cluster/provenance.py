"""Where code came from: the git commit recorded on runs and model versions (lineage).

A Ray job's working dir is uploaded without ``.git``, so the submitting side resolves the
commit and passes it to the job in ``RAYLINE_GIT_COMMIT``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_COMMIT_ENV = "RAYLINE_GIT_COMMIT"


def git_commit(cwd: str | Path | None = None) -> str:
    """The source commit: ``RAYLINE_GIT_COMMIT`` when set (inside a job), else ``git rev-parse HEAD``."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
