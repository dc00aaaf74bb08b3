"""The README's main command, for real: `rayline demo` on a private local stack, end to end.

Every stage runs: ingest → train v1 → evaluate → champion → serve → train v2 → canary to 100 %
(alias moves) → broken v3 rolled back automatically → canary reports. Nothing is mocked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cluster.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_pipeline_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYLINE_", "RAY_", "MLFLOW_"))}
    env.update({"RAYLINE_STATE_DIR": str(tmp_path / "state"), "RAYLINE_RAY_NUM_CPUS": "4", "COLUMNS": "200"})
    for name in ("RAY_GCS", "RAY_DASHBOARD", "RAY_CLIENT", "RAY_METRICS", "RAY_AGENT", "MLFLOW", "SERVE_HTTP"):
        env[f"RAYLINE_{name}_PORT"] = str(free_port())
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "demo"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "demo: 10 stages" in out
    assert re.search(r"3000 rows in → \d+ clean, \d+ quarantined", out)
    assert re.search(r"v2 promoted to 100 % .*champion → v2", out)
    assert re.search(r"v3 rolled back automatically .*champion stays v2", out)
    rollouts = set(re.findall(r"reports/rollouts/(demo-canary-v[23]-[0-9a-f]+)/report\.md", out))
    assert len(rollouts) == 2, out[-2000:]
    for rollout in rollouts:
        folder = ROOT / "reports" / "rollouts" / rollout
        assert (folder / "report.md").is_file() and (folder / "timeline.png").stat().st_size > 0
    assert "stack stopped" in out
    assert not (tmp_path / "state" / "stack.json").exists()
