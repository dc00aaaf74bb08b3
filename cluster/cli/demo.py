"""``rayline demo``: the whole pipeline end to end on the embedded local stack."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from cluster.cli.context import settings_of


def command(
    ctx: typer.Context,
    keep_up: Annotated[bool, typer.Option("--keep-up", help="Leave the stack running afterwards.")] = False,
) -> None:
    """Run the end-to-end demo: stack up → pipeline stages → where to look → stack down."""
    from cluster.demo import run_demo

    run_demo(settings_of(ctx), Console(), keep_up=keep_up)
