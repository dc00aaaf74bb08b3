"""The README's main command, for real: `rayline demo` on a private local stack, end to end.

Every stage runs: ingest → train v1 → evaluate → champion → serve → train v2 (better than v1 on the same
data) → quality gate passes, canary to 100 % (alias moves) → the worse v1 proposed again is refused by the
quality gate before any traffic → broken v3 (v2's weights) rolled back automatically → canary reports;
then the language-model track: Python's own sources ingested as text → tokenizer and token shards → a
tiny GPT trained and registered in the Hugging Face layout → evaluated with transformers alone → v2 (v1's run
trained one epoch more) registered as challenger → both served by the router app (``kind: llm``), a completion
streamed with the ``openai`` client → v2 canaried under streamed ``openai`` traffic (TTFT and error gates) and
promoted: the champion alias moves.
Nothing is mocked.
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
    assert "demo: 18 stages" in out
    assert re.search(r"3000 rows in → \d+ clean, \d+ quarantined", out)
    accuracy = dict(re.findall(r"registered customers-churn/(\d) \(val_accuracy (0\.\d+)", out))
    assert float(accuracy["2"]) > float(accuracy["1"]), accuracy   # the promoted v2 is the better model
    assert re.search(r"quality gate passed \(val_accuracy 0\.\d+ vs 0\.\d+\); v2 promoted to 100 % .*champion → v2",
                     out)
    refused = re.search(r"v1 refused before any traffic \(candidate v1 val_accuracy (0\.\d+) vs baseline v2 (0\.\d+) "
                        r"on customers version \S+ .*worse.*\); no rollout started; champion stays v2", out)
    assert refused and float(refused[1]) < float(refused[2]), out[-3000:]
    assert re.search(r"v3 rolled back automatically .*quality gate passed .*same weights as v2.*champion stays v2", out)
    rollouts = set(re.findall(r"reports/rollouts/(demo-canary-v[23]-[0-9a-f]+)/report\.md", out))
    assert len(rollouts) == 2, out[-2000:]
    for rollout in rollouts:
        folder = ROOT / "reports" / "rollouts" / rollout
        assert (folder / "report.md").is_file() and (folder / "timeline.png").stat().st_size > 0
    assert re.search(r"pystdlib \S+: \d+ files of asyncio, json → \d+ documents", out)
    assert re.search(r"tokenizer tok-[0-9a-f]{12} \(byte-level BPE, 4096 tokens\) → uint16 shards", out)
    trained = re.search(r"registered pystdlib-gpt/1 \(val_perplexity ([\d.]+)\) with a Hugging Face GPT-2 folder", out)
    evaluated = re.search(r"eval_perplexity ([\d.]+) on the validation tokens; sampled: '.+'", out)
    assert trained and evaluated, out[-3000:]
    assert float(evaluated[1]) < 400 and float(trained[1]) < 400   # far below 4096: it learned Python
    continued = re.search(r"registered pystdlib-gpt/2 \(val_perplexity ([\d.]+)\) as challenger: v1's run resumed at "
                          r"step \d+ for one more epoch", out)
    assert continued and float(continued[1]) < float(trained[1]), out[-3000:]   # trained on: better
    assert re.search(r"router app \(kind: llm\): champion v1 serves, challenger v2 deployed at 0 %; streamed from "
                     r"http://\S+/llm/v1/completions with the openai client \(baseline v1\): first token after \d+ ms, "
                     r"\d+ events: 'async def .+'", out), out[-3000:]
    # The canary's outcome: the quality gate passed, v2 took traffic, was promoted, and the alias moved.
    canary = re.search(r"quality gate passed \(val_perplexity [\d.]+ vs [\d.]+\); v2 promoted to 100 % in \d+ s "
                       r"\(last check with both: TTFT p50 v2 \d+ ms vs v1 \d+ ms, .*\); champion → v2; v2 serves now; "
                       r"\d+ streamed completions "
                       r"\(\{'baseline': \d+, 'candidate': (\d+)\}\)", out)
    assert canary and int(canary[1]) > 0, out[-3000:]
    assert "stack stopped" in out
    assert not (tmp_path / "state" / "stack.json").exists()
