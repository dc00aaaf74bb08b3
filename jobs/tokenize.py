"""Tokenize job: a text dataset version → a byte-level BPE tokenizer + packed token shards beside it.

    python -m jobs.tokenize --dataset pystd [--version latest] [--vocab-size 8192] [--tokenizer tokenizer.json]
    ray job submit --working-dir . -- python -m jobs.tokenize --dataset pystd --root s3://bucket/datasets

Trains the tokenizer on the version's train split (vocabulary size and special tokens from the
contract's ``tokenizer`` section, or these flags), or uses the file given; then writes
``tokens/<tokenizer id>/`` (see ``ingest.tokens``). Prints one ``RAYLINE_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import logging

from jobs.entry import catalog_job, emit_result, entrypoint

log = logging.getLogger("jobs.tokenize")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="text dataset name in the catalog")
    parser.add_argument("--version", default="latest", help="dataset version (default: latest)")
    parser.add_argument("--root", default=None, help="catalog root (default: settings.datasets_root)")
    parser.add_argument("--config", default=None, help="rayline settings YAML")
    parser.add_argument("--tokenizer", default=None, help="use this tokenizer.json instead of training one")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the contract's vocab_size")
    parser.add_argument("--max-tokens", type=int, default=None, help="leave out documents longer than this")
    return parser.parse_args(argv)


@entrypoint("tokenize")
def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    _, trace_id, root = catalog_job("jobs.tokenize", args.config, args.root)  # settings also point files at S3
    from ingest.tokens import build_token_dataset

    manifest = build_token_dataset(root, args.dataset, args.version, tokenizer_file=args.tokenizer,
                                   vocab_size=args.vocab_size, max_tokens=args.max_tokens)
    summary = {"job": "tokenize", "trace_id": trace_id, "dataset": args.dataset, "version": manifest["version"],
               "tokenizer": manifest["tokenizer"]["id"], "dtype": manifest["dtype"],
               "vocab_size": manifest["vocab_size"],
               "tokens": {s: v["tokens"] for s, v in manifest["splits"].items()},
               "documents": {s: v["documents"] for s, v in manifest["splits"].items()}}
    log.info("tokenize finished", extra={"dataset": args.dataset, "tokenizer": summary["tokenizer"]})
    return emit_result(summary)


if __name__ == "__main__":
    main()
