"""`make bench` runs each ``benchmarks/*_bench.py`` as a script: each must start that way (here: ``--help``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted((ROOT / "benchmarks").glob("*_bench.py"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bench", BENCHES, ids=[b.stem for b in BENCHES])
def test_every_benchmark_starts_as_a_plain_script(bench: Path, tmp_path: Path) -> None:
    """From another folder, with no PYTHONPATH: the way `make bench` (and a user) runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(bench), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "usage:" in done.stdout
