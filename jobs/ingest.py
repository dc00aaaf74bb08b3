"""Ingest job: raw CSV/Parquet/NDJSON → contract-checked, versioned Parquet dataset.

    python -m jobs.ingest --source 'data/*.csv' --contract examples/contracts/customers.yaml --dataset customers
    ray job submit --working-dir . -- python -m jobs.ingest --source s3://bucket/raw/ --contract ... --dataset ...

Prints one ``RAYLINE_RESULT {json}`` line (version, counts) at the end; errors are one line and an exit code.
"""

from __future__ import annotations

import argparse
import logging

from jobs.entry import catalog_job, emit_result, entrypoint

log = logging.getLogger("jobs.ingest")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True,
                        help="file, glob or fsspec URL (s3://…); repeat for several")
    parser.add_argument("--contract", required=True, help="data contract YAML")
    parser.add_argument("--dataset", required=True, help="dataset name in the catalog")
    parser.add_argument("--root", default=None, help="catalog root (default: settings.datasets_root)")
    parser.add_argument("--config", default=None, help="rayline settings YAML")
    parser.add_argument("--mlflow", action="store_true", help="log an 'ingest' run with the version as input")
    return parser.parse_args(argv)


@entrypoint("ingest")
def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    settings, trace_id, root = catalog_job("jobs.ingest", args.config, args.root)
    from ingest.pipeline import run_ingest

    version = run_ingest(args.source, args.contract, args.dataset, root, settings=settings,
                         log_to_mlflow=args.mlflow)
    summary = {"job": "ingest", "trace_id": trace_id, "dataset": version.name, "version": version.version,
               "parent": version.manifest.get("parent"), "path": version.path, "counts": version.manifest["counts"],
               "drift_breached": version.manifest["drift"]["breached"]}
    log.info("ingest finished", extra={"dataset": version.name, "version": version.version})
    return emit_result(summary)


if __name__ == "__main__":
    main()
