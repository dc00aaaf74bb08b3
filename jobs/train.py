"""Training job entrypoint: ``ray job submit --working-dir . -- python -m jobs.train --config CONFIG.yaml``.

Validates the config and the dataset version before any worker starts, trains on Ray Train
(resuming when the run name already has checkpoints), logs to MLflow and registers the model
if it passes the config's gate. Prints one ``RAYLINE_RESULT {json}`` summary line.
"""

from __future__ import annotations

import argparse
import logging

from cluster.logs import configure_logging
from cluster.settings import load_settings
from cluster.tracing import ensure_trace_id
from jobs.entry import emit_result, entrypoint

RESULT_METRICS = ("step", "epoch", "resumed_from_step", "steps_this_attempt")  # besides every val_*

log = logging.getLogger("jobs.train")


@entrypoint("jobs.train")
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--run-name", help="override the config's run_name (same name = resume)")
    parser.add_argument("--settings", help="rayline settings YAML (default: RAYLINE_* env / rayline.yaml)")
    changed = parser.add_mutually_exclusive_group()
    changed.add_argument("--new-run", action="store_true",
                         help="start the run name over (its old folder is kept aside as <name>.replaced-<time>)")
    changed.add_argument("--resume-with-changes", action="store_true",
                         help="resume the run name although its config changed (recorded in its MLflow run)")
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    configure_logging("jobs.train", level=settings.log_level, fmt=settings.log_format)
    trace_id = ensure_trace_id()

    from train.config import load_config
    from train.trainer import train

    config = load_config(args.config)
    if args.run_name:
        config = config.model_copy(update={"run_name": args.run_name})

    import ray

    ray.init(ignore_reinit_error=True, logging_level="WARNING")
    outcome = train(config, settings, new_run=args.new_run, resume_with_changes=args.resume_with_changes)
    summary = {
        "job": "train", "trace_id": trace_id, "run_name": config.run_name, "run_id": outcome.run_id,
        "metrics": {k: v for k, v in outcome.metrics.items() if k.startswith("val_") or k in RESULT_METRICS},
        "model_uri": outcome.model_uri, "gate": outcome.gate_reason,
        "registered": outcome.registered.uri if outcome.registered else None,
    }
    return emit_result(summary)


if __name__ == "__main__":
    main()
