"""Ray Train DDP vs plain torchrun DDP (same model, data, batch; 2 processes, gloo), and
PowerSGD vs no compression on the GPT model (bytes per step, loss after a fixed budget).

    .venv/bin/python benchmarks/train_ddp_bench.py --repeats 5

Part 1 times the training step (forward, backward with the DDP allreduce, clip, optimizer
step) inside the same train loop components in both launchers: the Ray job through
``train.trainer.build_trainer`` (Ray Data shard, Ray's process group, checkpoints), the
baseline through ``torchrun`` with the same model, strategy and batches from numpy. Each
repeat is a fresh launch; a repeat's figure is the median step time over its steps.
Part 2 runs the GPT job twice under Ray Train (compression none / powersgd) for the same
number of steps and compares bytes sent per step and the final training/validation loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402

STEP_MODEL = {"name": "gpt", "params": {"n_layer": 2, "n_embd": 128, "n_head": 4}}
STEP_DATA = {"vocab_size": 256, "seq_len": 64, "train_sequences": 1024, "validation_sequences": 64}
LM_MODEL = {"name": "gpt", "params": {"n_layer": 2, "n_embd": 512, "n_head": 4}}
LM_DATA = {"vocab_size": 256, "seq_len": 64, "train_sequences": 16384, "validation_sequences": 128}  # < 1 epoch
POWERSGD = {"kind": "powersgd", "rank": 4, "start_iter": 10}  # at width 512, rank 4 still sends >= 50x less
LM_SCHEDULE = {"name": "cosine", "warmup_steps": 20}   # both runs; a decayed LR damps the compression error
BATCH = 16
PARTS = ("step-time", "compression")
WARMUP = 2


def config(name: str, model: dict, data: dict, steps: int, compression: dict | None = None,
           schedule: dict | None = None, eval_batches: int = 2):
    from train.config import parse_config

    return parse_config({"run_name": name, "seed": 0, "model": model, "data": {"synthetic_tokens": data},
                         "batch_size": BATCH, "epochs": 100, "max_steps": steps, "log_every": 10**6,
                         "optimizer": {"lr": 1e-3}, "schedule": schedule or {}, "checkpoint": {"keep": 1},
                         "compression": compression or {"kind": "none"}, "eval_batches": eval_batches})


def ray_run(cfg, settings) -> dict:
    from train.data import resolve_data, steps_per_epoch
    from train.faults import FaultPlan
    from train.trainer import build_trainer

    plan = resolve_data(cfg, settings)
    steps = steps_per_epoch(plan.rows["train"], cfg.batch_size, cfg.scaling.num_workers)
    return dict(build_trainer(cfg, settings, plan, steps, None, FaultPlan()).fit().metrics)


def torchrun_worker(steps: int) -> None:
    """One torchrun process: the same model/strategy/batches, no Ray."""
    import torch
    import torch.distributed as dist

    from models.registry import DataSpec, build_model
    from train.config import SyntheticTokens
    from train.data import synthetic_tokens
    from train.loop import seed_everything
    from train.optim import build_optimizer
    from train.strategy import DDPStrategy, plain_ddp
    from train.tasks import task_for

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # what Ray gives a 1-CPU worker (OMP_NUM_THREADS=1)
    cfg = config("torchrun", STEP_MODEL, STEP_DATA, steps)
    options = SyntheticTokens(**STEP_DATA)
    tokens = torch.from_numpy(synthetic_tokens(options, options.train_sequences, 0).astype("int64"))
    seed_everything(0)
    model = build_model("gpt", STEP_MODEL["params"], DataSpec("tokens", vocab_size=256, seq_len=64))
    strategy = DDPStrategy(cfg, torch.device("cpu"), wrap=lambda m: plain_ddp(m, torch.device("cpu")))
    strategy.setup(model, lambda m: build_optimizer(cfg.optimizer, m))
    task = task_for("language_modeling")
    times = []
    global_batch = BATCH * world
    for step in range(steps):
        start = (step * global_batch) % (len(tokens) - global_batch) + rank * BATCH
        batch = tokens[start:start + BATCH]
        x, y = batch[:, :-1], batch[:, 1:]
        started = time.perf_counter()
        loss = task.loss(strategy.model, x, y)
        strategy.backward(loss)
        strategy.step(cfg.grad_clip)
        loss.item()
        times.append(time.perf_counter() - started)
    if rank == 0:
        print("BENCH_RESULT " + json.dumps({"step_time_median_s": statistics.median(times[WARMUP:])}), flush=True)
    dist.destroy_process_group()


def torchrun_run(steps: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               __file__, "--torchrun-worker", "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    raise RuntimeError(f"torchrun run failed: {done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--steps", type=int, default=60, help="steps per timing repeat")
    parser.add_argument("--lm-steps", type=int, default=400, help="fixed budget for powersgd vs none")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torchrun_worker:
        torchrun_worker(args.steps)
        return

    import tempfile

    from cluster import local_ray
    from cluster.settings import load_settings

    state = Path(tempfile.mkdtemp(prefix="rayline-bench-"))
    settings = load_settings(state_dir=state, checkpoints_root=str(state / "checkpoints"))
    local_ray.start(num_cpus=4)
    report = Report("train-ddp", workload=f"GPT {STEP_MODEL['params']} seq 64, batch {BATCH}/worker, 2 workers, gloo")
    figures: dict = {}
    if "step-time" in args.parts:
        figures.update(step_time_part(args.repeats, args.steps, settings, report))
    if "compression" in args.parts:
        figures.update(compression_part(args.lm_steps, settings, report))
    path = report.write(" ".join(["benchmarks/train_ddp_bench.py", *sys.argv[1:]]))
    print(json.dumps({**figures, "report": str(path)}))


def step_time_part(repeats: int, steps: int, settings, report: Report) -> dict:
    """Ray Train vs torchrun, interleaved repeats (drift in machine load hits both alike)."""
    ray_times, torchrun_times = [], []
    for i in range(repeats):
        t = torchrun_run(steps)["step_time_median_s"]
        r = ray_run(config(f"bench-step-{i}-{time.time_ns()}", STEP_MODEL, STEP_DATA, steps), settings)
        torchrun_times.append(t)
        ray_times.append(r["step_time_median_s"])
        report.add(part="step_time", repeat=i, launcher="torchrun", step_time_s=t)
        report.add(part="step_time", repeat=i, launcher="ray_train", step_time_s=r["step_time_median_s"])
    ray_s, base_s = summarize(ray_times), summarize(torchrun_times)
    ratio = ray_s["median"] / base_s["median"]
    report.section("Ray Train vs torchrun: median step time", report.table([
        {"launcher": "torchrun DDP (baseline)", **{k: base_s[k] for k in ("n", "median", "p95", "min", "max")}},
        {"launcher": "Ray Train DDP", **{k: ray_s[k] for k in ("n", "median", "p95", "min", "max")}},
    ]) + f"\n\nratio Ray/torchrun = **{ratio:.3f}** (target ≤ 1.05)\n")
    return {"ratio_ray_over_torchrun": ratio}


def compression_part(lm_steps: int, settings, report: Report) -> dict:
    """The GPT job under Ray Train with compression none and powersgd: bytes and loss after the same budget."""
    lm = {}
    for kind, comp in (("none", {"kind": "none"}), ("powersgd", POWERSGD)):
        cfg = config(f"bench-lm-{kind}-{time.time_ns()}", LM_MODEL, LM_DATA, lm_steps, comp, LM_SCHEDULE,
                     eval_batches=LM_DATA["validation_sequences"] // (2 * BATCH))   # all of it, on 2 workers
        metrics = lm[kind] = ray_run(cfg, settings)
        report.add(part="compression", kind=kind, bytes_per_step=metrics["bytes_sent_last_step"],
                   bytes_total=metrics["bytes_sent_total"], train_loss=metrics["train_loss"],
                   val_loss=metrics["val_loss"], step_time_s=metrics["step_time_median_s"])
    bytes_ratio = lm["none"]["bytes_sent_last_step"] / lm["powersgd"]["bytes_sent_last_step"]
    run_ratio = lm["none"]["bytes_sent_total"] / lm["powersgd"]["bytes_sent_total"]   # uncompressed warm-up included
    loss_delta = lm["powersgd"]["val_loss"] / lm["none"]["val_loss"] - 1
    report.section(f"PowerSGD (rank {POWERSGD['rank']}, start {POWERSGD['start_iter']}) vs none: "
                   f"GPT {LM_MODEL['params']}, {lm_steps} steps on {LM_DATA['train_sequences']} sequences, "
                   f"AdamW lr 1e-3, schedule {LM_SCHEDULE}",
                   report.table([{"kind": k, "bytes_per_step": v["bytes_sent_last_step"],
                                  "bytes_whole_run": v["bytes_sent_total"], "train_loss": v["train_loss"],
                                  "val_loss": v["val_loss"], "step_time_s": v["step_time_median_s"]}
                                 for k, v in lm.items()])
                   + f"\n\nbytes ratio none/powersgd = **{bytes_ratio:.1f}×** per step once compressing "
                   f"(target ≥ 50×), **{run_ratio:.1f}×** over the whole run; "
                   f"val loss powersgd vs none = **{loss_delta:+.2%}** (target within 3%)\n")
    return {"bytes_ratio": bytes_ratio, "bytes_ratio_run": run_ratio, "val_loss_delta": loss_delta}

if __name__ == "__main__":
    main()
