"""What every ``rayline`` subcommand shares: the global options and how they become Settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from cluster.logs import configure_logging
from cluster.settings import Settings, load_settings


@dataclass
class AppState:
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: Settings | None = None


def settings_of(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings for this invocation: defaults → YAML → RAYLINE_* env → global and command flags."""
    root = ctx.find_root()
    state: AppState = root.obj if isinstance(root.obj, AppState) else AppState()
    settings = load_settings(state.config, **state.overrides, **flags)
    configure_logging("cli", level=settings.log_level, fmt=settings.log_format)
    state.settings = settings
    return settings
