"""What decides a run's result, recorded in its folder so a resubmission cannot resume another run.

Submitting a run name again resumes its latest checkpoint. That is only right when the job is
the same job: ``of(config, plan)`` names, group by group, everything that decides the result
(model, data version, optimizer, schedule, seed, world size, batch size, strategy), and
``claim`` compares it with the ``fingerprint.json`` the first submission wrote:

- same fingerprint: resume;
- different, by default: refused with one line naming what changed (:class:`RunChangedError`);
- ``new_run``: the old folder is kept aside as ``<name>.replaced-<UTC time>`` and the run starts
  over (a new MLflow run too, since the run id lives in the folder);
- ``resume_with_changes``: resume from the checkpoint with the new settings; the caller records
  the changes in the MLflow run. World size, batch size and strategy cannot change this way: a
  checkpoint's data position counts global batches of ``batch_size × world size × accumulation``
  and its shards and RNG states are per rank, so resuming across them would not re-derive the
  position exactly; those are refused even then.

The file is written with ``cluster.files`` (a compare-and-swap: two submissions racing for one
name cannot both write their own fingerprint).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import files
from cluster.errors import ConfigError
from train.config import TrainConfig

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
# Changing these cannot be resumed from a checkpoint, whatever the user asks (see the module docstring).
STRUCTURAL = ("world_size", "batch_size", "strategy")
_SHOWN_CHARS = 60  # longest value shown in a one-line message


class RunChangedError(ConfigError):
    """A run name was submitted again with a different fingerprint; one line names what changed."""


@dataclass(frozen=True)
class Claim:
    """The outcome of ``claim``: what changed from the recorded fingerprint (empty: the same run)."""

    changes: list[str] = field(default_factory=list)
    replaced: str | None = None  # where a ``new_run`` moved the previous folder


def of(config: TrainConfig, plan: Any, accumulation: int = 1) -> dict[str, Any]:
    """The fingerprint: one JSON-able value per group, compared leaf by leaf."""
    data = {**plan.description, "shuffle_buffer": config.data.shuffle_buffer}
    if config.data.synthetic_tokens is not None:
        data["synthetic_tokens"] = config.data.synthetic_tokens.model_dump(mode="json")
    return json.loads(json.dumps({
        "model": {"name": config.model.name, "params": config.model.params},
        "data": data,
        "optimizer": {**config.optimizer.model_dump(mode="json"), "grad_clip": config.grad_clip},
        "schedule": {**config.schedule.model_dump(mode="json"), "epochs": config.epochs,
                     "max_steps": config.max_steps},
        "seed": config.seed,
        "world_size": config.scaling.num_workers,
        "batch_size": {"per_worker": config.batch_size, "accumulation_steps": accumulation},
        "strategy": {"name": config.strategy, "deepspeed": config.deepspeed, "precision": config.precision,
                     "compression": config.compression.model_dump(mode="json"), "use_gpu": config.scaling.use_gpu},
    }, sort_keys=True))


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _shown(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…"


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``group.path: old → new`` for every leaf that differs, in group order."""
    changes = []
    for group in sorted(set(old) | set(new)):
        before, after = _leaves(old.get(group), group), _leaves(new.get(group), group)
        for path in sorted(set(before) | set(after)):
            if before.get(path) != after.get(path):
                changes.append(f"{path}: {_shown(before.get(path))} → {_shown(after.get(path))}")
    return changes


def _group(change: str) -> str:
    return change.split(":", 1)[0].split(".", 1)[0]


def claim(run_dir: str | Path, fingerprint: dict[str, Any], run_name: str, *, new_run: bool = False,
          resume_with_changes: bool = False) -> Claim:
    """Record ``fingerprint`` for the run in ``run_dir`` or check it against the recorded one.

    Raises RunChangedError when it differs and neither option allows it (see the module docstring).
    """
    replaced = _replace(run_dir) if new_run else None
    path = files.join(run_dir, FINGERPRINT_FILE)
    payload = json.dumps(fingerprint, sort_keys=True, indent=1)
    found = files.read_versioned(path)
    if found is None:
        try:
            files.write_if(path, payload, None)
            return Claim(replaced=replaced)
        except files.WriteConflict:  # another submission of this name wrote first: compare with it
            found = files.read_versioned(path)
            assert found is not None
    recorded, token = json.loads(found[0]), found[1]
    changes = diff(recorded, fingerprint)
    if not changes:
        return Claim()
    structural = [c for c in changes if _group(c) in STRUCTURAL]
    if structural:
        raise RunChangedError(
            f"run {run_name!r} was started with another {_groups(structural)} ({'; '.join(structural)}): its "
            f"checkpoint cannot be resumed across that (data position and shards are per world size, batch and "
            f"strategy); pass --new-run to start it over or pick another run_name")
    if not resume_with_changes:
        raise RunChangedError(
            f"run {run_name!r} was started with another {_groups(changes)} ({'; '.join(changes)}); resubmit it "
            f"unchanged to resume, pass --resume-with-changes to resume with these changes (recorded in its MLflow "
            f"run) or --new-run to start it over")
    files.write_if(path, payload, token)
    log.warning("resuming with changes", extra={"run_name": run_name, "changes": changes})
    return Claim(changes=changes)


def _groups(changes: list[str]) -> str:
    names = list(dict.fromkeys(_group(c).replace("_", " ") for c in changes))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _replace(run_dir: str | Path) -> str | None:
    """Move an existing run folder aside (kept, never deleted); returns where it went."""
    if not files.is_local(run_dir):
        raise RunChangedError(f"--new-run moves the old run folder aside, which needs a local checkpoints_root, not "
                              f"{run_dir}; pick another run_name instead")
    current = files.local_path(run_dir)
    if not current.exists():
        return None
    target = current.with_name(f"{current.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    current.rename(target)
    files.fsync_dir(current.parent)
    return str(target)
