"""The text ingest: documents → contract rules → de-duplication → split → a versioned dataset.

The same catalog, staging, content-addressed version id, manifest (with checksums, written last),
LATEST compare-and-swap, quarantine and drift as tables (:mod:`ingest.pipeline`); only the rules
(:mod:`ingest.text_rules`) and the profile (:mod:`ingest.text_profile`) are text's own.

Steps: read every document (a folder: one a file) → normalise → rules (rejected rows into the
quarantine with rule and reason) → exact duplicates by content hash, then near duplicates
(MinHash, when the contract asks) → split by content hash → ``split=<s>/part-00000.parquet`` with
``text``, ``content_hash``, ``chars`` and the metadata columns. The whole corpus is held in memory
(a few GB of text on a small node); tables stream, text does not yet.

Accounting: ``rows_in = rows_out + rows_quarantined + rows_deduplicated``; every removed
duplicate is listed in ``duplicates/duplicates.parquet`` with the row it duplicates and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from cluster.settings import Settings, load_settings
from ingest import drift, quarantine, text_profile
from ingest.catalog import Catalog, DatasetVersion
from ingest.errors import ContractError
from ingest.pipeline import ZSTD_LEVEL, check_identity, manifest_head, parent_version, staged, version_digest
from ingest.progress import Progress
from ingest.rules import CHECK, COLUMN, REASON, ROW, RULE, first_failed, named_failure
from ingest.sources import SOURCE_COLUMN
from ingest.text_contract import TEXT, TextContract, load_text_contract
from ingest.text_rules import checks, content_hash, in_validation, near_duplicates, normalised
from ingest.text_sources import DECODE_ERROR, read_text_sources

HASH = "content_hash"
CHARS = "chars"
VALIDATION = "_validation"
DUPLICATES = "duplicates"
SPLITS = ("train", "validation")


def run_text_ingest(source: str | list[str], contract: str | Path | TextContract | dict[str, Any], dataset: str,
                    root: str, *, settings: Settings | None = None, log_to_mlflow: bool = False,
                    progress: Progress | None = None) -> DatasetVersion:
    """Ingest the documents of ``source`` under a text contract as a new version of ``dataset``."""
    settings = settings or load_settings()
    spec = load_text_contract(contract)
    progress = progress or Progress(dataset)
    catalog = Catalog(root)
    progress.begin("read")
    frame, sources = read_text_sources(source, spec, settings.s3_endpoint_url)
    progress.step("read", rows=frame.height)
    parent = parent_version(catalog, dataset)
    version = staged(catalog, dataset, lambda staging: _run(frame, sources, spec, dataset, catalog, staging,
                                                             parent, progress))
    if log_to_mlflow:
        from ingest.lineage import log_ingest_run

        log_ingest_run(version, settings)
    return version


def _run(frame: pl.DataFrame, sources: list[dict[str, Any]], spec: TextContract, dataset: str, catalog: Catalog,
         staging: Path, parent: DatasetVersion | None, progress: Progress) -> DatasetVersion:
    qdir = staging / quarantine.DIR
    rows_in = frame.height
    if rows_in == 0:
        raise ContractError(f"dataset {dataset}: the sources hold no documents")
    steps: list[dict[str, Any]] = []

    progress.begin("validate")
    found = checks(spec)
    checked = frame.with_columns(normalised(spec.text)).with_columns(first_failed([c[0] for c in found]).alias(CHECK))
    rejected = checked.filter(pl.col(CHECK).is_not_null())
    if rejected.height:
        failures = rejected.with_columns(named_failure(found))
        quarantine.write(quarantine.from_typed(failures, spec, "contract", pl.col(RULE), pl.col(COLUMN),
                                               pl.col(REASON)), qdir, "contract")
    valid = checked.filter(pl.col(CHECK).is_null()).drop(CHECK, DECODE_ERROR)
    if valid.height == 0:
        top = quarantine.summary(qdir)["by_rule"][:3]
        raise ContractError(f"dataset {dataset}: no valid documents — all {rows_in} broke the contract ("
                            + ", ".join(f"{r[RULE]}: {r['rows']}" for r in top) + ")")
    steps.append({"step": "validate", "rows_in": rows_in, "rows_out": valid.height, "quarantined": rejected.height})
    progress.step("validate", rows_in=rows_in, valid=valid.height, quarantined=rejected.height)

    progress.begin("deduplicate")
    kept, removed = _deduplicate(valid, spec)
    if removed.height:
        (staging / DUPLICATES).mkdir()
        removed.write_parquet(staging / DUPLICATES / "duplicates.parquet", compression="zstd")
    by_rule = {rule: int(n) for rule, n in removed.group_by(RULE).len().iter_rows()} if removed.height else {}
    steps.append({"step": "deduplicate", "rows_in": valid.height, "rows_out": kept.height,
                  "exact_duplicates": by_rule.get("exact", 0), "near_duplicates": by_rule.get("near", 0)})
    progress.step("deduplicate", rows_out=kept.height, removed=removed.height)

    progress.begin("split")
    split_rows = {}
    for split in SPLITS:
        part = kept.filter(pl.col(VALIDATION) == (split == "validation")) \
            .select(TEXT, HASH, pl.col(TEXT).str.len_chars().alias(CHARS), *spec.metadata)
        split_rows[split] = part.height
        (staging / f"split={split}").mkdir()
        part.write_parquet(staging / f"split={split}" / "part-00000.parquet", compression="zstd",
                           compression_level=ZSTD_LEVEL)
    progress.step("split", **split_rows)

    reference = parent.manifest.get("profile") if parent and parent.manifest.get("kind") == "text" else None
    prof = text_profile.profile(kept[TEXT], spec, reference)
    report = drift.compare(reference, prof, spec.drift, parent.version if reference else None)
    drift.enforce(report, dataset)

    quarantine.prune(qdir)
    quarantined = quarantine.summary(qdir)
    counts = {"rows_in": rows_in, "rows_out": kept.height, "rows_quarantined": int(quarantined["rows"]),
              "rows_deduplicated": removed.height, **{f"split_{k}": v for k, v in split_rows.items()}}
    check_identity(counts, dataset)
    data_files = sorted(staging.glob("split=*/*.parquet"))
    version = "v-" + version_digest(data_files, staging, spec.digest())[:12]
    manifest = {
        "kind": "text",
        **manifest_head(dataset, version, parent, spec),
        "sources": sources,
        "schema": {n: str(t) for n, t in pl.read_parquet_schema(data_files[0]).items()},
        "counts": {**counts, "identity": "rows_in = rows_out + rows_quarantined + rows_deduplicated",
                   "identity_holds": True},
        "steps": steps,
        "duplicates": {"exact": by_rule.get("exact", 0), "near": by_rule.get("near", 0),
                       "path": f"{DUPLICATES}/duplicates.parquet" if removed.height else None,
                       "content_hash": "sha256 of NFC text, whitespace collapsed, case-folded",
                       "near_method": spec.deduplicate.near.model_dump() if spec.deduplicate.near else None},
        "split": {"method": "sha256(f'{seed}:{content_hash}') first 8 hex digits mod 10000",
                  "seed": spec.split.seed, "validation_fraction": spec.split.validation_fraction,
                  "rows": split_rows},
        "profile": {"distributions": prof["distributions"]},
        "drift": report,
        "quarantine": quarantined,
        "files": [{"path": str(p.relative_to(staging)), "bytes": p.stat().st_size,
                   "rows": pl.scan_parquet(p).select(pl.len()).collect().item()} for p in data_files],
        "polars_version": pl.__version__,
    }
    published = catalog.publish(dataset, staging, version, manifest)
    progress.step("publish", version=published.version, rows_out=kept.height)
    return published


def _deduplicate(valid: pl.DataFrame, spec: TextContract) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept documents with hash and split flag, removed duplicates with the row each repeats and why)."""
    texts = valid[TEXT].to_list()
    hashes = [content_hash(t) for t in texts]
    fraction, seed = spec.split.validation_fraction, spec.split.seed
    frame = valid.with_columns(pl.Series(HASH, hashes, dtype=pl.String),
                               pl.Series(VALIDATION, [in_validation(h, seed, fraction) for h in hashes],
                                         dtype=pl.Boolean))
    first_row = pl.col(ROW).first().over(HASH)
    removed = []
    if spec.deduplicate.exact:
        frame = frame.with_columns(first_row.alias("duplicate_of"))
        repeats = frame.filter(pl.col(ROW) != pl.col("duplicate_of"))
        frame = frame.filter(pl.col(ROW) == pl.col("duplicate_of")).drop("duplicate_of")
        removed.append(repeats.with_columns(
            pl.lit("exact").alias(RULE),
            pl.format("same normalised content as row {}", pl.col("duplicate_of")).alias(REASON)))
    similar = near_duplicates(frame[TEXT].to_list(), spec)
    if similar:
        rows = frame[ROW].to_list()
        index = pl.DataFrame({ROW: [rows[i] for i in similar], "duplicate_of": [rows[j] for j in similar.values()]},
                             schema={ROW: pl.Int64, "duplicate_of": pl.Int64})
        near = frame.join(index, on=ROW).with_columns(
            pl.lit("near").alias(RULE),
            pl.format("near duplicate (MinHash Jaccard >= {}) of row {}",
                      pl.lit(spec.deduplicate.near.threshold), pl.col("duplicate_of")).alias(REASON))
        frame = frame.filter(~pl.col(ROW).is_in(index[ROW].implode()))
        removed.append(near)
    columns = [ROW, SOURCE_COLUMN, HASH, "duplicate_of", RULE, REASON]
    out = pl.concat([r.select(columns) for r in removed]) if removed else \
        pl.DataFrame(schema={ROW: pl.Int64, SOURCE_COLUMN: pl.String, HASH: pl.String, "duplicate_of": pl.Int64,
                             RULE: pl.String, REASON: pl.String})
    return frame.sort(ROW), out.sort(ROW)
