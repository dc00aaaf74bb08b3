"""The ``rayline`` CLI run as a subprocess, shared by the stack tests and the training fault tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rayline(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``rayline ARGS`` in a fresh interpreter with ``env``: exit code and output as a user sees them."""
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
