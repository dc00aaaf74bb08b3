"""Evaluation job: ``python -m jobs.evaluate --model models:/NAME@ALIAS --dataset VERSION``.

``--dataset`` is ``VERSION`` (dataset name from the model's lineage tag) or ``NAME/VERSION``.
Writes eval metrics and an ``evaluation.png`` (learning curves + confusion matrix or
residuals) to a new MLflow run; prints one ``RAYLINE_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse

from cluster.logs import configure_logging
from cluster.settings import load_settings
from jobs.entry import emit_result, entrypoint


@entrypoint("jobs.evaluate")
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    parser.add_argument("--dataset", required=True, help="VERSION or NAME/VERSION ('latest' allowed)")
    parser.add_argument("--settings", help="rayline settings YAML")
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    configure_logging("jobs.evaluate", level=settings.log_level, fmt=settings.log_format)

    from train.evaluation import describe, evaluate

    name, _, version = args.dataset.rpartition("/")
    summary = describe(evaluate(settings, args.model, name or None, version))
    return emit_result(summary)


if __name__ == "__main__":
    main()
