"""Training on token shards vs on synthetic tokens: the same tiny GPT, steps, batch and 2 workers.

    .venv/bin/python benchmarks/train_tokens_bench.py [--repeats 5] [--steps 80] [--max-files 120]

Workload: the Python standard library's own ``.py`` files (nothing is downloaded), ingested
once with ``examples/contracts/pystdlib_text.yaml`` and tokenized once (byte-level BPE trained
on the train split). Then, alternating (in turns: each side first every other repeat),
``--repeats`` times each, a fresh Ray Train job
(``train.trainer.build_trainer``, no MLflow) of ``--steps`` optimizer steps:

- token shards: ``data: {dataset, version}``, the shards memory-mapped and packed into rows of
  ``seq_len + 1`` tokens in the driver;
- synthetic (the baseline): ``data.synthetic_tokens`` with the same vocabulary, ``seq_len`` and
  number of training rows.

Training tokens/s = ``batch × workers × seq_len / step interval``, where the step interval is the
median wall time from one step's end to the next (``step_interval_median_s``: the step and the
wait for its batches, so the data path is inside it). The compute-only step time and the
driver's data preparation (``resolve_data``: shards opened and packed, or the Markov chain
generated; both handed to Ray) are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402
from benchmarks.tokenize_bench import corpus  # noqa: E402
from benchmarks.train_ddp_bench import ray_run  # noqa: E402

MODEL = {"name": "gpt", "params": {"n_layer": 2, "n_embd": 128, "n_head": 4}}
SEQ = 64
BATCH = 16
WORKERS = 2
VOCAB = 2048
DATASET = "pystdlib-bench"


def config(name: str, data: dict, steps: int):
    from train.config import parse_config

    return parse_config({"run_name": name, "seed": 0, "model": {**MODEL, "params": {**MODEL["params"], "seq_len": SEQ}},
                         "data": data, "batch_size": BATCH, "epochs": 100, "max_steps": steps, "log_every": 10**6,
                         "optimizer": {"lr": 1e-3}, "checkpoint": {"keep": 1}, "eval_batches": 2,
                         "scaling": {"num_workers": WORKERS}})


def token_dataset(work: Path, root: str, max_files: int) -> dict:
    """The stdlib corpus ingested and tokenized once; returns the token manifest."""
    from ingest.pipeline import run_ingest
    from ingest.tokens import build_token_dataset

    folder, _ = corpus(work, max_files)
    run_ingest(str(folder), ROOT / "examples" / "contracts" / "pystdlib_text.yaml", DATASET, root)
    return build_token_dataset(root, DATASET, vocab_size=VOCAB)


def timed_run(cfg, settings) -> dict:
    """One job: the driver's ``resolve_data`` time, then the training metrics of ``ray_run``."""
    from train.data import resolve_data

    started = time.perf_counter()
    resolve_data(cfg, settings)
    prepare_s = time.perf_counter() - started
    return {**ray_run(cfg, settings), "prepare_s": prepare_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--max-files", type=int, default=120)
    args = parser.parse_args()

    from cluster import local_ray
    from cluster.settings import load_settings

    state = Path(tempfile.mkdtemp(prefix="rayline-bench-"))
    settings = load_settings(state_dir=state, checkpoints_root=str(state / "checkpoints"),
                             datasets_root=str(state / "datasets"))
    manifest = token_dataset(state, str(settings.datasets_root), args.max_files)
    vocab, train_rows = manifest["vocab_size"], manifest["splits"]["train"]["tokens"] // (SEQ + 1)
    validation_rows = manifest["splits"]["validation"]["tokens"] // (SEQ + 1)
    local_ray.start(num_cpus=4)
    sources = {
        "token shards": {"dataset": DATASET, "version": "latest"},
        "synthetic (baseline)": {"synthetic_tokens": {"vocab_size": vocab, "seq_len": SEQ,
                                                      "train_sequences": train_rows,
                                                      "validation_sequences": validation_rows}},
    }
    report = Report("train-tokens", workload=(
        f"GPT {MODEL['params']} seq {SEQ}, vocab {vocab}, batch {BATCH}/worker, {WORKERS} workers (gloo), "
        f"{args.steps} steps; {manifest['splits']['train']['tokens']:,} train tokens "
        f"({train_rows} rows) from {args.max_files} stdlib files"))
    results: dict[str, dict[str, list[float]]] = {k: {"tokens_per_s": [], "compute_tokens_per_s": [], "prepare_s": []}
                                                  for k in sources}
    tokens_per_step = BATCH * WORKERS * SEQ
    for repeat in range(args.repeats):
        order = list(sources) if repeat % 2 == 0 else list(reversed(sources))  # neither side always runs first
        for source in order:
            data = sources[source]
            metrics = timed_run(config(f"bench-tokens-{repeat}-{time.time_ns()}", data, args.steps), settings)
            row = {"tokens_per_s": tokens_per_step / metrics["step_interval_median_s"],
                   "compute_tokens_per_s": tokens_per_step / metrics["step_time_median_s"],
                   "prepare_s": metrics["prepare_s"]}
            for key, value in row.items():
                results[source][key].append(value)
            report.add(repeat=repeat, source=source, **row)
    summaries = {source: {key: summarize(values) for key, values in figures.items()}
                 for source, figures in results.items()}
    tokens, synthetic = (summaries[k]["tokens_per_s"]["median"] for k in sources)
    ratio = tokens / synthetic
    compute = summaries["token shards"]["compute_tokens_per_s"]["median"] / \
        summaries["synthetic (baseline)"]["compute_tokens_per_s"]["median"]
    paired = summarize([a / b for a, b in zip(*(results[k]["tokens_per_s"] for k in sources), strict=True)])
    report.section("Training tokens/s: token shards vs synthetic tokens (medians)", report.table([
        {"source": source, "n": s["tokens_per_s"]["n"], "tokens_per_s": s["tokens_per_s"]["median"],
         "tokens_per_s_min": s["tokens_per_s"]["min"], "tokens_per_s_max": s["tokens_per_s"]["max"],
         "compute_only_tokens_per_s": s["compute_tokens_per_s"]["median"], "driver_prepare_s": s["prepare_s"]["median"]}
        for source, s in summaries.items()
    ]) + f"\n\nratio token shards / synthetic = **{ratio:.3f}** (target ≥ 0.95: the data path costs < 5 %); "
                   f"paired per repeat: median {paired['median']:.3f} "
                   f"(min {paired['min']:.3f}, max {paired['max']:.3f}); "
                   f"compute-only (no data wait) ratio = {compute:.3f}, the spread the machine itself adds\n")
    path = report.write(" ".join(["benchmarks/train_tokens_bench.py", *sys.argv[1:]]))
    print(json.dumps({"ratio_tokens_over_synthetic": ratio, "paired_ratio_median": paired["median"],
                      "tokens_per_s": tokens, "synthetic_tokens_per_s": synthetic, "report": str(path)}))


if __name__ == "__main__":
    main()
