"""Storage benchmark: the same ingest and the same checkpoint save/restore on local disk vs an S3 API server.

The S3 side is moto's standalone server (``python -m moto.server``) on 127.0.0.1: a real HTTP S3
API, but in-memory and single-host, so the figures show the protocol's cost (HTTP, signing,
no rename, a manifest and a conditional PUT), not a real bucket's network. Both sides run in
this process, alternating local and S3 in every repeat so machine load hits both alike.

- **ingest**: ``run_ingest`` of the ingest bench's generated CSV into a fresh catalog root each
  repeat (a reused root would find the version already published), timed end to end; MB/s is
  the published version's bytes (Parquet, quarantine, manifest) over that time.
- **checkpoint save**: rank files of a DDP tabular MLP (model, AdamW state, RNG, manifest) are
  written to a local staging folder, then copied into the run's storage with
  ``pyarrow.fs.copy_files`` through the filesystem Ray Train would get (``files.arrow_filesystem``),
  as Ray Train's ``report`` persists a checkpoint.
- **checkpoint restore**: ``ray.train.Checkpoint(path, filesystem).as_directory()`` (the download a
  worker does) plus ``read_state`` (every digest verified, state loaded).

    .venv/bin/python benchmarks/storage_bench.py [--rows 200000] [--repeats 5] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest_bench import CONTRACT, generate  # noqa: E402
from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402
from cluster import files  # noqa: E402
from cluster.processes import free_port, session_members, start_detached, tcp_reachable, terminate, wait_until  # noqa: E402
from cluster.settings import load_settings  # noqa: E402

SIDES = ("local", "s3")
BUCKET = "bench"


def start_s3(log_dir: Path) -> tuple[Any, str]:
    port = free_port()
    proc = start_detached([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                          log_dir / "moto.log")
    if not wait_until(lambda: tcp_reachable("127.0.0.1", port, 0.2), timeout_s=60):
        raise RuntimeError("moto S3 server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(RAYLINE_S3_ENDPOINT_URL=endpoint, RAYLINE_S3_REGION="us-east-1",  # what load_settings reads
                      RAYLINE_S3_ACCESS_KEY_ID="bench", RAYLINE_S3_SECRET_ACCESS_KEY="bench")
    load_settings()
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return proc, endpoint


def root_of(side: str, work: Path) -> str:
    """A fresh root on ``side``."""
    name = uuid.uuid4().hex[:8]
    return str(work / "roots" / name) if side == "local" else f"s3://{BUCKET}/{name}"


def time_ingest(src: Path, root: str) -> tuple[float, int]:
    from ingest.pipeline import run_ingest

    started = time.perf_counter()
    version = run_ingest(str(src), CONTRACT, "bench", root)
    seconds = time.perf_counter() - started
    fs, path = files.filesystem(version.path)
    size = sum(info["size"] for info in fs.find(path, detail=True).values())
    return seconds, size


def tabular_strategy(hidden: int) -> tuple[Any, Any]:
    """A DDP strategy over a tabular MLP (two ``hidden``-wide layers) after one AdamW step, and its scheduler."""
    import torch

    from models.registry import DataSpec, build_model
    from train.config import parse_config
    from train.optim import build_optimizer, build_scheduler
    from train.strategy import DDPStrategy

    config = parse_config({"run_name": "bench", "model": {"name": "tabular_mlp", "params": {"hidden": [hidden] * 2}},
                           "data": {"dataset": "d", "version": "v1"}})
    torch.manual_seed(0)
    model = build_model("tabular_mlp", {"hidden": [hidden] * 2}, DataSpec("tabular", num_inputs=256, num_outputs=2))
    strategy = DDPStrategy(config, torch.device("cpu"), wrap=lambda m: m)
    strategy.setup(model, lambda m: build_optimizer(config.optimizer, m))
    scheduler = build_scheduler(config.schedule, strategy.optimizer, total_steps=10)
    loss = torch.nn.functional.cross_entropy(strategy.model(torch.randn(8, 256)), torch.randint(0, 2, (8,)))
    strategy.backward(loss)
    strategy.step(1.0)
    return strategy, scheduler


def time_checkpoint(strategy: Any, scheduler: Any, root: str, work: Path) -> tuple[float, float, int]:
    """(save seconds, restore seconds, checkpoint bytes) for one checkpoint under ``root``."""
    import pyarrow.fs as pafs
    import ray.train

    from train.checkpoint import TrainState, checkpoint_dir_name, read_state, write_rank_files

    fs, base = files.arrow_filesystem(root)
    fs = fs or pafs.LocalFileSystem()
    target = f"{base}/{checkpoint_dir_name(1)}"
    staging = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    write_rank_files(staging, 0, strategy, TrainState(step=1), {"scheduler": scheduler})
    fs.create_dir(target)  # as Ray Train's persist does before it copies
    pafs.copy_files(str(staging), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    save_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in staging.iterdir())
    started = time.perf_counter()
    with ray.train.Checkpoint(target, filesystem=fs).as_directory() as directory:
        state = read_state(Path(directory), 0, strategy, {"scheduler": scheduler})
    restore_s = time.perf_counter() - started
    assert state.step == 1
    return save_s, restore_s, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--hidden", type=int, default=2048, help="MLP width: 2048 gives a ~60 MB checkpoint")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rayline-storage-bench-"))
    server, endpoint = start_s3(work)
    try:
        src = work / "input.csv"
        generate(src, args.rows)
        strategy, scheduler = tabular_strategy(args.hidden)
        times: dict[str, list[float]] = {f"{k}_{s}": [] for k in ("ingest", "save", "restore") for s in SIDES}
        sizes: dict[str, int] = {}
        report = Report("storage", f"ingest of a {args.rows:,}-row generated CSV (benchmarks/ingest_bench.py's table)"
                        f" and save/restore of a tabular MLP checkpoint (hidden {args.hidden}×2, AdamW), local disk "
                        f"vs moto's S3 server at {endpoint}; {args.repeats} repeats, sides alternating")
        for repeat in range(args.repeats):
            for side in SIDES if repeat % 2 == 0 else tuple(reversed(SIDES)):
                seconds, sizes["ingest"] = time_ingest(src, root_of(side, work))
                save_s, restore_s, sizes["checkpoint"] = time_checkpoint(strategy, scheduler, root_of(side, work), work)
                times[f"ingest_{side}"].append(seconds)
                times[f"save_{side}"].append(save_s)
                times[f"restore_{side}"].append(restore_s)
                report.add(repeat=repeat, side=side, ingest_s=round(seconds, 4), checkpoint_save_s=round(save_s, 4),
                           checkpoint_restore_s=round(restore_s, 4))
                print(f"repeat {repeat} {side}: ingest {seconds:.2f}s save {save_s:.2f}s restore {restore_s:.2f}s",
                      flush=True)
        rows = []
        for kind, size_key in (("ingest", "ingest"), ("save", "checkpoint"), ("restore", "checkpoint")):
            local, remote = summarize(times[f"{kind}_local"]), summarize(times[f"{kind}_s3"])
            mb = sizes[size_key] / 1024**2
            rows.append({"operation": kind, "MB": round(mb, 1), "local median s": local["median"],
                         "s3 median s": remote["median"], "s3 / local": remote["median"] / local["median"],
                         "local MB/s": mb / local["median"], "s3 MB/s": mb / remote["median"],
                         "local p95 s": local["p95"], "s3 p95 s": remote["p95"]})
        report.section("Medians", report.table(rows))
        report.section("Reading it", "The S3 side is moto's in-memory server on the same 2 cores: its Python HTTP "
                       "handling competes with the client for CPU, so the ratio is an upper bound on protocol "
                       "overhead, not a prediction for a real bucket. The machine was shared with other jobs.")
        out = report.write(" ".join(["python", "benchmarks/storage_bench.py", *sys.argv[1:]]))
        print(report.table(rows))
        print(f"report: {out}")
    finally:
        terminate(session_members(server.pid), grace_s=5)


if __name__ == "__main__":
    main()
