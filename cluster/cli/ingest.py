"""``rayline ingest``: run the ingest pipeline here, or submit it as a Ray job (``--submit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cluster.cli.context import settings_of, submit_job

console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[2]


def command(
    ctx: typer.Context,
    source: Annotated[list[str], typer.Option("--source", "-s", help="File, glob or s3:// URL; repeatable.")],
    contract: Annotated[Path, typer.Option("--contract", help="Data contract YAML.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name in the catalog.")],
    root: Annotated[str | None, typer.Option(help="Catalog root (default: settings datasets_root).")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Log an MLflow 'ingest' run (lineage).")] = False,
    submit: Annotated[bool, typer.Option("--submit", help="Run as a Ray job on the cluster.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="With --submit: stream logs to the end.")] = False,
) -> None:
    """Ingest raw tables into a new contract-checked dataset version."""
    settings = settings_of(ctx)
    root = root or str(settings.datasets_root)
    root = root if "://" in root else str(Path(root).absolute())  # an s3:// root is not a path
    if not submit:
        from ingest.pipeline import run_ingest

        version = run_ingest(source, contract, dataset, root, settings=settings, log_to_mlflow=mlflow)
        counts = version.manifest["counts"]
        console.print(f"[bold]{dataset}[/] {version.version} (parent {version.manifest.get('parent')}): "
                      f"in {counts['rows_in']:,} → out {counts['rows_out']:,}, quarantined "
                      f"{counts['rows_quarantined']:,}, deduplicated {counts['rows_deduplicated']:,}\n"
                      f"  {escape(version.path)}")
        breached = version.manifest["drift"]["breached"]
        if breached:
            console.print(f"[yellow]drift above threshold:[/] {', '.join(breached)}")
        return
    args = ["python", "-m", "jobs.ingest", "--contract", str(contract), "--dataset", dataset, "--root", root]
    for s in source:
        args += ["--source", s if "://" in s else str(Path(s).absolute())]
    if mlflow:
        args.append("--mlflow")
    submit_job(settings, args, what="ingest job", follow=follow, working_dir=ROOT)
