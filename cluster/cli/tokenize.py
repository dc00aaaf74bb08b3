"""``rayline tokenize``: a text dataset version → tokenizer + token shards, here or as a Ray job (``--submit``)."""

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
    dataset: Annotated[str, typer.Option("--dataset", help="Text dataset name in the catalog.")],
    version: Annotated[str, typer.Option(help="Dataset version.")] = "latest",
    root: Annotated[str | None, typer.Option(help="Catalog root (default: settings datasets_root).")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Use this tokenizer.json instead of training one.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Override the contract's tokenizer vocab_size.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Leave out documents longer than this.")] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Run as a Ray job on the cluster.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="With --submit: stream logs to the end.")] = False,
) -> None:
    """Train a byte-level BPE on a text version's train split and write its packed token shards."""
    settings = settings_of(ctx)
    root = root or str(settings.datasets_root)
    root = root if "://" in root else str(Path(root).absolute())
    if not submit:
        from ingest.tokens import build_token_dataset

        manifest = build_token_dataset(root, dataset, version, tokenizer_file=str(tokenizer) if tokenizer else None,
                                       vocab_size=vocab_size, max_tokens=max_tokens)
        splits = ", ".join(f"{s} {v['tokens']:,} tokens in {v['documents']:,} documents"
                           for s, v in manifest["splits"].items())
        console.print(f"[bold]{dataset}[/] {manifest['version']} tokenizer {manifest['tokenizer']['id']} "
                      f"(vocab {manifest['vocab_size']:,}, {manifest['dtype']}): {escape(splits)}")
        return
    args = ["python", "-m", "jobs.tokenize", "--dataset", dataset, "--version", version, "--root", root]
    if tokenizer:
        args += ["--tokenizer", str(tokenizer.absolute())]
    for flag, value in (("--vocab-size", vocab_size), ("--max-tokens", max_tokens)):
        if value is not None:
            args += [flag, str(value)]
    submit_job(settings, args, what="tokenize job", follow=follow, working_dir=ROOT)
