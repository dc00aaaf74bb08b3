"""``rayline models list|show|alias``: registered model versions and their aliases."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cluster.cli.context import settings_of
from cluster.registry import CHALLENGER, CHAMPION, Registry

app = typer.Typer(help="Registered models: versions, lineage tags, aliases (champion / challenger).",
                  no_args_is_help=True)
console = Console(width=200)


@app.command("list")
def list_models(ctx: typer.Context,
                name: Annotated[str | None, typer.Argument(help="Model name: list its versions.")] = None) -> None:
    """List registered models, or the versions of one model."""
    registry = Registry(settings_of(ctx))
    if name is not None:
        console.print(versions_table(registry, name))
        return
    table = Table(title="registered models")
    for col in ("name", "versions", "aliases"):
        table.add_column(col)
    for model in registry.models():
        versions = registry.versions(model)
        aliases = ", ".join(f"{a}→v{v.version}" for v in versions for a in v.aliases)
        table.add_row(model, str(len(versions)), aliases or "-")
    console.print(table)


def versions_table(registry: Registry, name: str) -> Table:
    table = Table(title=f"{name} versions")
    for col in ("version", "aliases", "dataset", "val metrics", "git commit", "run"):
        table.add_column(col)
    for v in registry.versions(name):
        metrics = " ".join(f"{k}={val}" for k, val in sorted(v.tags.items()) if k.startswith("val_"))
        dataset = f"{v.tags.get('dataset', '')} {v.tags.get('dataset_version', '')}".strip()
        commit = v.tags.get("git_commit", "")[:12] + (" (dirty)" if v.tags.get("git_dirty") == "true" else "")
        table.add_row(v.version, ", ".join(v.aliases) or "-", dataset, metrics, commit, v.run_id or "")
    return table


@app.command()
def show(ctx: typer.Context, ref: Annotated[str, typer.Argument(
        help="NAME (its versions), NAME/VERSION, NAME@ALIAS or models:/…")]) -> None:
    """Show one version: source, run, aliases and every tag (lineage); a bare NAME lists its versions."""
    registry = Registry(settings_of(ctx))
    body = ref.removeprefix("models:/")
    if "/" not in body and "@" not in body:
        console.print(versions_table(registry, body))
        return
    info = registry.resolve(ref)
    console.print(f"[bold]{info.name}[/] version {info.version}  ({info.status})")
    console.print(f"uri      models:/{info.name}/{info.version}")
    console.print(f"aliases  {', '.join(info.aliases) or '-'}")
    console.print(f"run      {info.run_id}")
    console.print(f"source   {info.source}")
    for key, value in sorted(info.tags.items()):
        console.print(f"tag      {key}={value}")


@app.command()
def alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help=f"e.g. {CHAMPION} or {CHALLENGER}.")],
    version: Annotated[str | None, typer.Argument(help="Version to point the alias at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias instead.")] = False,
) -> None:
    """Point ALIAS at VERSION (or remove it with --delete)."""
    registry = Registry(settings_of(ctx))
    if delete:
        registry.delete_alias(name, alias_name)
        console.print(f"removed {name}@{alias_name}")
        return
    if version is None:
        raise typer.BadParameter("give a VERSION (or --delete)", param_hint="VERSION")
    registry.version(name, version)  # a clear RegistryError when the version does not exist
    registry.set_alias(name, alias_name, version)
    console.print(f"{name}@{alias_name} → version {version}")
