"""The train function each Ray Train worker runs: read it top to bottom like nanoGPT's loop.

forward → backward (× gradient-accumulation micro-batches) → clip + step → schedule → log →
checkpoint (every N steps and at epoch end, with validation metrics). A step is an optimizer
step, for checkpoints, the schedule and logs alike. Ray Train appears where it acts: rank/world/device from the
context, the dataset shard, and ``report``/``get_checkpoint`` inside the Checkpointer.
Everything else is a component: model factory, strategy, compression, checkpoint, data.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from models.registry import DataSpec, build_model
from train.checkpoint import Checkpointer, TrainState
from train.config import TrainConfig
from train.data import RankBatches, collate_for, quiet_ray_data
from train.faults import FaultPlan
from train.memory import rank_metrics, rss_window
from train.optim import apply_config, build_optimizer, build_scheduler
from train.strategy import Strategy, strategy_class
from train.tasks import task_for
from train.tracking import StepLogger

WARMUP_STEPS_EXCLUDED = 2  # first steps of an attempt (allocation, hook setup) are not timed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(loop_config["config"])
    quiet_ray_data()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Model: same initial weights on every rank, then a per-rank RNG stream (dropout, etc.).
    seed_everything(cfg.seed)
    task = task_for(loop_config["task"])
    model = build_model(cfg.model.name, cfg.model.params, DataSpec(**loop_config["spec"]))
    seed_everything(cfg.seed + 1000 * (rank + 1))
    strategy: Strategy = strategy_class(cfg)(cfg, device)
    strategy.setup(model, lambda m: build_optimizer(cfg.optimizer, m))

    steps_per_epoch = loop_config["steps_per_epoch"]  # optimizer steps
    accumulation = loop_config.get("accumulation_steps", 1)
    total_steps = min(cfg.max_steps or 10**12, cfg.epochs * steps_per_epoch)
    scheduler = build_scheduler(cfg.schedule, strategy.optimizer, total_steps)
    extras = {"scheduler": scheduler}

    # Resume: after a worker failure or when the same run name is submitted again.
    checkpointer = Checkpointer(rank, world)
    state = checkpointer.restore(strategy, extras)
    if state is None:
        state = TrainState(world_size=world)
    else:  # a resume with changes trains with the new hyperparameters from the restored step on
        apply_config(cfg.optimizer, strategy.optimizer, scheduler)

    collate = collate_for(loop_config["task"], loop_config.get("preprocessing"))
    train_data = RankBatches(ray.train.get_dataset_shard("train"), collate, cfg.batch_size, rank, world,
                             seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer, device=device)
    val_data = RankBatches(ray.train.get_dataset_shard("validation"), collate, cfg.batch_size, rank, world,
                           seed=cfg.seed, device=device)
    fault = FaultPlan(**loop_config.get("fault", {}))
    logger = StepLogger(loop_config.get("tracking"), every=cfg.log_every) if rank == 0 else None
    stats = _AttemptStats(resumed_from=state.step)

    def checkpoint() -> None:
        metrics = {**evaluate(strategy, task, val_data, cfg.eval_batches), **stats.summary(),
                   **rank_metrics(strategy.raw_model, strategy.optimizer,
                                  {"checkpoint_rss_growth_bytes": stats.checkpoint_rss_growth}),
                   "step": state.step, "epoch": state.epoch}
        if logger:
            logger.log(state.step, {k: v for k, v in metrics.items() if k.startswith("val_")}, force=True)
        with rss_window() as window:  # this rank's peak memory growth while saving (reported with the next one)
            checkpointer.save(strategy, state, extras, metrics)
        stats.checkpoint_rss_growth = max(stats.checkpoint_rss_growth, window.growth_bytes)

    while state.step < total_steps:
        for micro_batches in train_data.steps(state.epoch, skip=state.batch_in_epoch, limit=steps_per_epoch,
                                              accumulation=accumulation):
            fault.maybe_fail(state.step, rank)
            started = time.perf_counter()
            losses = []
            for x, y in micro_batches:
                with strategy.autocast():
                    loss = task.loss(strategy.model, x, y)
                strategy.backward(loss)
                losses.append(loss.detach())
            grad_norm = strategy.step(cfg.grad_clip)
            scheduler.step()
            loss_value = torch.stack(losses).mean().item()
            step_time = time.perf_counter() - started
            state.step += 1
            state.batch_in_epoch += 1
            fault.after_step(state.step, rank)

            comm = strategy.comm_bytes()
            stats.add(step_time, loss_value, comm.uncompressed, comm.sent)
            if logger:
                logger.log(state.step, {
                    "loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                    "step_time_s": step_time,
                    f"{task.unit}_per_s": task.items(x) * len(micro_batches) * world / step_time,
                    "bytes_uncompressed": comm.uncompressed, "bytes_sent": comm.sent,
                    "compression_ratio": comm.ratio,
                })
            if state.step >= total_steps:
                break
            every = cfg.checkpoint.every_steps
            if every and state.step % every == 0 and state.batch_in_epoch < steps_per_epoch:
                checkpoint()
        if state.batch_in_epoch >= steps_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        checkpoint()  # epoch end (or the final step)
    if logger:
        logger.flush()


@torch.no_grad()
def evaluate(strategy: Strategy, task: Any, data: RankBatches, limit: int | None) -> dict[str, float]:
    """Validation metrics over the whole split, identical on every rank (sums all-reduced).

    Every rank runs a forward on every batch, padded where its share of the last one is short
    (ZeRO-3 gathers parameters inside each forward); the padding is left out of the sums.
    """
    model = strategy.raw_model
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    for x, y, valid in data.padded(limit):
        with strategy.autocast():
            for key, value in task.sums(model, x, y, valid).items():
                sums[key] += value
    model.train()
    strategy.after_evaluation()
    if torch.distributed.is_initialized():
        packed = torch.tensor([sums[k] for k in task.sum_keys], dtype=torch.float64)
        torch.distributed.all_reduce(packed)
        sums = defaultdict(float, zip(task.sum_keys, packed.tolist(), strict=True))
    return task.metrics(sums)


class _AttemptStats:
    """Per-attempt step statistics reported with each checkpoint (medians, bytes, ratio, where it resumed)."""

    def __init__(self, resumed_from: int = 0) -> None:
        self.resumed_from = resumed_from
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.uncompressed = 0
        self.sent = 0
        self.sent_per_step: list[int] = []
        self.checkpoint_rss_growth = 0  # the largest peak-RSS growth of this rank across its saves so far
        self.intervals: list[float] = []  # step end to step end: the step plus waiting for its batches
        self._last_end: float | None = None

    def add(self, step_time: float, loss: float, uncompressed: int, sent: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self.intervals.append(now - self._last_end)
        self._last_end = now
        self.step_times.append(step_time)
        self.losses.append(loss)
        self.uncompressed += uncompressed
        self.sent += sent
        self.sent_per_step.append(sent)

    def summary(self) -> dict[str, float]:
        timed = self.step_times[WARMUP_STEPS_EXCLUDED:] or self.step_times
        out = {"train_loss": statistics.fmean(self.losses[-10:]) if self.losses else float("nan"),
               "steps_this_attempt": len(self.step_times), "resumed_from_step": self.resumed_from}
        if timed:
            out["step_time_median_s"] = statistics.median(timed)
        if self.intervals:  # includes the data path (step_time does not), and any checkpoint in between
            out["step_interval_median_s"] = statistics.median(self.intervals[WARMUP_STEPS_EXCLUDED:] or self.intervals)
        if self.sent:
            out["bytes_uncompressed_total"] = self.uncompressed
            out["bytes_sent_total"] = self.sent
            out["compression_ratio"] = self.uncompressed / self.sent
            out["bytes_sent_last_step"] = self.sent_per_step[-1]
        return out
