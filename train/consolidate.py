"""Sharded DeepSpeed checkpoint → one plain fp32 ``state_dict`` that loads without DeepSpeed.

Registration and serving want an ordinary ``nn.Module``; this is the single place that reads
DeepSpeed's on-disk layout. ZeRO 1–3 checkpoints are merged from every rank's fp32 partitions
with DeepSpeed's own ``zero_to_fp32``; a stage-0 checkpoint already holds the full module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from cluster import files
from cluster.errors import RaylineError

MODEL_STATES = "mp_rank_00_model_states.pt"


class ConsolidationError(RaylineError):
    """A directory is not a readable DeepSpeed checkpoint."""


def latest_tag(checkpoint_dir: str | Path) -> str:
    """The tag DeepSpeed's ``latest`` file points at."""
    latest = Path(checkpoint_dir) / "latest"
    if not latest.is_file():
        raise ConsolidationError(f"{checkpoint_dir} is not a DeepSpeed checkpoint (no 'latest' file)")
    return latest.read_text().strip()


def _is_zero(tag_dir: Path) -> bool:
    return any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt"))


def consolidated_state_dict(checkpoint_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """All parameters and buffers of the model as contiguous fp32 CPU tensors."""
    checkpoint_dir = Path(checkpoint_dir)
    tag = tag or latest_tag(checkpoint_dir)
    tag_dir = checkpoint_dir / tag
    if not tag_dir.is_dir():
        raise ConsolidationError(f"checkpoint tag {tag!r} missing under {checkpoint_dir}")
    if _is_zero(tag_dir):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    else:
        state = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=False)["module"]
    return {k: (v.float() if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}


def consolidated_state_dict_at(url: str, tag: str | None = None) -> dict[str, torch.Tensor]:
    """``consolidated_state_dict`` of a checkpoint on any storage (read in place when local)."""
    if files.is_local(url):
        return consolidated_state_dict(files.local_path(url), tag)
    with tempfile.TemporaryDirectory(prefix="rayline-consolidate-") as tmp:
        files.download_tree(url, Path(tmp))
        return consolidated_state_dict(tmp, tag)
