"""The ingest pipeline: source → contract → dedupe → clean → encode/split → versioned Parquet.

Passes, each streaming or bounded by one bucket (about ``BUCKET_BYTES`` of input):

1. scan → cast + rules (lazy, streamed) → valid rows hash-partitioned into buckets by key,
   rejected rows into the quarantine; the run fails here, before publishing anything, on a
   missing column or a column whose values mostly do not cast.
2. per bucket: exact and key duplicates (all rows of a key share a bucket).
3. one statistics pass: fill values, outlier bounds, vocabularies, classes (a frozen Plan).
4. per bucket: fill → outliers → encode → split → ``split=<s>/part-<bucket>.parquet`` (zstd).
5. profile (column stats, normalisation, distributions), drift against the parent, content hash,
   manifest, atomic publish; optionally an MLflow "ingest" run.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from cluster.settings import Settings, load_settings
from cluster.storage import storage_problem
from ingest import cleaning, drift, quarantine
from ingest.catalog import Catalog, DatasetVersion
from ingest.contract import Contract, load_contract
from ingest.errors import AccountingError, ContractError, SourceError
from ingest.profile import Profiler
from ingest.progress import Progress
from ingest.rules import CHECK, COLUMN, FFILL_PREFIX, ROW, RULE, check_columns, validate
from ingest.sources import SOURCE_COLUMN, SourceFile, resolve, scan, source_error, source_schema
from ingest.text_contract import TextContract, is_text_contract

BUCKET_BYTES = {"csv": 64 * 1024**2, "ndjson": 64 * 1024**2, "parquet": 16 * 1024**2}
BUCKET = "_bucket"
WORK = "_work"
ZSTD_LEVEL = 1  # level 1 writes ~2x faster than the default 3 on 2 cores, for a few % more bytes
Bucket = pl.DataFrame | Path  # a bucket of rows, in memory (single bucket) or spilled to disk


def run_ingest(source: str | list[str], contract: str | Path | Contract | TextContract | dict[str, Any], dataset: str,
               root: str, *, settings: Settings | None = None, log_to_mlflow: bool = False,
               progress: Progress | None = None) -> DatasetVersion:
    """Ingest ``source`` under ``contract`` as a new version of ``dataset`` in the catalog at ``root``
    (a text contract, ``kind: text``, goes to :mod:`ingest.text_pipeline`)."""
    settings = settings or load_settings()
    if is_text_contract(contract):
        from ingest.text_pipeline import run_text_ingest

        return run_text_ingest(source, contract, dataset, root, settings=settings, log_to_mlflow=log_to_mlflow,
                               progress=progress)
    spec = load_contract(contract)
    progress = progress or Progress(dataset)
    catalog = Catalog(root)
    files = resolve(source, settings.s3_endpoint_url)
    lf = scan(files, settings.s3_endpoint_url)
    schema = source_schema(lf, files)
    check_columns(spec, schema, files[0].path if len(files) == 1 else f"{len(files)} source files")
    parent = parent_version(catalog, dataset)
    version = staged(catalog, dataset,
                     lambda staging: _run(lf, schema, files, spec, dataset, catalog, staging, parent, progress))
    if log_to_mlflow:
        from ingest.lineage import log_ingest_run

        log_ingest_run(version, settings)
    return version


def parent_version(catalog: Catalog, dataset: str) -> DatasetVersion | None:
    version = catalog.latest_version(dataset)
    return catalog.get(dataset, version) if version else None


def staged(catalog: Catalog, dataset: str, build: Callable[[Path], DatasetVersion]) -> DatasetVersion:
    """Run ``build`` in a fresh staging directory, removed when it fails (a full disk: one line)."""
    with catalog.writing(dataset):
        staging = catalog.stage(dataset)
        try:
            return build(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _run(lf: pl.LazyFrame, schema: pl.Schema, files: list[SourceFile], spec: Contract, dataset: str,
         catalog: Catalog, staging: Path, parent: DatasetVersion | None, progress: Progress) -> DatasetVersion:
    work, qdir = staging / WORK, staging / quarantine.DIR
    buckets = max(1, math.ceil(sum(f.bytes for f in files) / BUCKET_BYTES[files[0].format]))
    steps: list[dict[str, Any]] = []

    progress.begin("validate")
    rows_in, rows_valid, rows_rejected, valid = _validate(lf, schema, files, spec, work, qdir, buckets)
    steps.append({"step": "validate", "rows_in": rows_in, "rows_out": rows_valid, "quarantined": rows_rejected})
    progress.step("validate", rows_in=rows_in, valid=rows_valid, quarantined=rows_rejected)

    progress.begin("deduplicate")
    dedup_counts = {"exact_duplicates": 0, "key_duplicates": 0, "key_quarantined": 0}
    deduped: list[Bucket | None] = []
    while valid:  # popped, so each input bucket is freed as soon as it is deduplicated
        b, bucket = valid.pop(0)
        df, repeats, counts = cleaning.deduplicate(_load(bucket), spec)
        del bucket
        dedup_counts = {k: dedup_counts[k] + counts[k] for k in dedup_counts}
        deduped.append(df if buckets == 1 else _spill(df, work / f"dedup-{b:05d}.parquet"))
        if repeats is not None:
            quarantine.write(repeats, qdir, f"unique-{b:05d}")
        progress.rows(df.height + sum(counts.values()), rows_valid)
    rows_dedup = rows_valid - sum(dedup_counts.values())
    steps.append({"step": "deduplicate", "rows_in": rows_valid, "rows_out": rows_dedup,
                  "quarantined": dedup_counts["key_quarantined"], **dedup_counts})
    progress.step("deduplicate", rows_out=rows_dedup, **dedup_counts)

    progress.begin("statistics")
    plan = cleaning.make_plan(_lazy(deduped), spec, rows_dedup)
    ffilled = _forward_filled(deduped, spec)
    progress.step("statistics", rows=plan.rows)

    progress.begin("clean")
    features = cleaning.feature_manifest(spec, plan)
    reference = parent.manifest.get("profile") if parent else None
    profiler = Profiler(spec, features, plan, reference)
    clean_counts: dict[str, dict[str, int]] = {"filled": dict(ffilled), "clipped": {}, "outliers_quarantined": {}}
    split_rows = {cleaning.TRAIN: 0, cleaning.VALIDATION: 0}
    for b in range(len(deduped)):
        bucket, deduped[b] = deduped[b], None  # the list no longer holds it: freed once transformed
        out, rejected, counts = cleaning.transform(_load(bucket), spec, plan)
        del bucket
        for group, values in counts.items():
            for col, n in values.items():
                clean_counts[group][col] = clean_counts[group].get(col, 0) + n
        if rejected is not None:
            quarantine.write(rejected, qdir, f"outliers-{b:05d}")
        profiler.add(out)
        for split in split_rows:
            part = out.filter(pl.col(cleaning.SPLIT) == split).drop(cleaning.SPLIT)
            split_rows[split] += part.height
            (staging / f"split={split}").mkdir(exist_ok=True)
            part.write_parquet(staging / f"split={split}" / f"part-{b:05d}.parquet", compression="zstd",
                              compression_level=ZSTD_LEVEL)
        progress.rows(out.height, rows_dedup)
    shutil.rmtree(work, ignore_errors=True)
    rows_out = sum(split_rows.values())
    outliers_q = sum(clean_counts["outliers_quarantined"].values())
    steps.append({"step": "clean", "rows_in": rows_dedup, "rows_out": rows_out, "quarantined": outliers_q,
                  **clean_counts})
    progress.step("clean", rows_out=rows_out, quarantined=outliers_q)

    progress.begin("profile")
    prof = profiler.result()
    report = drift.compare(reference, prof, spec.drift, parent.version if parent else None)
    drift.enforce(report, dataset)
    progress.step("profile", drift_breached=len(report["breached"]))

    quarantine.prune(qdir)
    quarantined = quarantine.summary(qdir)
    counts = {"rows_in": rows_in, "rows_out": rows_out, "rows_quarantined": int(quarantined["rows"]),
              "rows_deduplicated": dedup_counts["exact_duplicates"] + dedup_counts["key_duplicates"],
              **{f"split_{k}": v for k, v in split_rows.items()}}
    check_identity(counts, dataset)
    data_files = sorted(p for p in staging.rglob("*.parquet") if p.parent.name.startswith("split="))
    version = "v-" + version_digest(data_files, staging, spec.digest())[:12]
    out_schema = pl.scan_parquet(data_files[0]).collect_schema()
    manifest = {
        **manifest_head(dataset, version, parent, spec),
        "sources": [f.to_dict() for f in files],
        "source_schema": {n: str(t) for n, t in schema.items() if n != SOURCE_COLUMN},
        "schema": {n: str(t) for n, t in out_schema.items()},
        "key": spec.key,
        "target": spec.target,
        "task": spec.task,
        "classes": plan.classes,
        "features": features,
        "normalization": prof["normalization"],
        "counts": {**counts, "identity": "rows_in = rows_out + rows_quarantined + rows_deduplicated",
                   "identity_holds": True},
        "steps": steps,
        "cleaning": plan.to_dict(),
        "column_stats": prof["column_stats"],
        "profile": {"distributions": prof["distributions"], "edges_from": prof["edges_from"]},
        "split": {"method": "polars hash of key (String) with seed, mod 10000", "key": spec.key or ROW,
                  "seed": spec.split.seed, "validation_fraction": spec.split.validation_fraction,
                  "rows": split_rows, "polars": pl.__version__},
        "drift": report,
        "quarantine": quarantined,
        "files": [{"path": str(p.relative_to(staging)), "bytes": p.stat().st_size,
                   "rows": pl.scan_parquet(p).select(pl.len()).collect().item()} for p in data_files],
        "buckets": buckets,
        "polars_version": pl.__version__,
    }
    published = catalog.publish(dataset, staging, version, manifest)
    progress.step("publish", version=published.version, rows_out=rows_out)
    return published


def _validate(lf: pl.LazyFrame, schema: pl.Schema, files: list[SourceFile], spec: Contract, work: Path,
              qdir: Path, buckets: int) -> tuple[int, int, int, list[tuple[int, Bucket]]]:
    """Pass 1 (streamed): valid rows into key-hash buckets, rejected rows into the quarantine.

    With one bucket (input smaller than BUCKET_BYTES) the valid rows stay in memory: the
    bucket would be read whole by the next step anyway, so spilling it only costs I/O.
    """
    checked = validate(lf.with_row_index(ROW), spec, schema)
    basis = pl.col(spec.key).cast(pl.String) if spec.key else pl.struct(spec.names)
    ffill = [FFILL_PREFIX + c.name for c in spec.columns if c.fill is not None and c.fill.method == "forward"]
    valid = checked.filter(pl.col(CHECK).is_null()).select(
        pl.col(ROW).cast(pl.Int64), pl.col(SOURCE_COLUMN).cast(pl.Categorical), *spec.names, *ffill,
        (basis.hash(seed=0) % buckets).alias(BUCKET))
    qdir.mkdir(parents=True, exist_ok=True)
    # The source path is one of a few values: carried as a categorical, not a string per row.
    # Sinks need not keep row order (~1.5x faster on 2 cores): buckets are re-sorted by row number.
    rejected = quarantine.from_validation(checked, spec).sink_parquet(qdir / "contract.parquet", lazy=True,
                                                                      maintain_order=False)
    in_memory = buckets == 1
    target = valid.drop(BUCKET) if in_memory else valid.sink_parquet(
        pl.PartitionBy(work / "valid", key=BUCKET, include_key=False), mkdir=True, lazy=True,
        compression="uncompressed", statistics=False, maintain_order=False)
    try:
        results = pl.collect_all([target, rejected], engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        if storage_problem(exc, work) is not None:
            raise  # our own disk, not the source: Catalog.writing says so
        raise source_error([f.path for f in files], exc) from None
    parts: list[tuple[int, Bucket]] = [(0, results[0])] if in_memory else _bucket_files(work / "valid", buckets)
    stats = [_lazy([p]).select(pl.len().alias("n"), pl.col(ROW).max().alias("last")) for _, p in parts]
    stats.append(pl.scan_parquet(qdir / "contract.parquet").select(pl.len().alias("n"),
                                                                    pl.col(ROW).max().alias("last")))
    results = pl.collect_all(stats)
    rows_valid = sum(int(r["n"][0]) for r in results[:-1])
    rows_rejected = int(results[-1]["n"][0])
    last = max((r["last"][0] for r in results if r["last"][0] is not None), default=None)
    rows_in = 0 if last is None else int(last) + 1  # the scanner's own row count, not a sum of ours
    if rows_in == 0:
        raise SourceError(f"{files[0].path}: no data rows (header only?)")
    _check_casts(qdir / "contract.parquet", spec, rows_in)
    if rows_valid == 0:
        top = quarantine.summary(qdir)["by_rule"][:3]
        rules = ", ".join(f"{r[RULE]} on {r[COLUMN]}: {r['rows']}" for r in top)
        raise ContractError(f"{files[0].path}: no valid rows — all {rows_in} rows broke the contract ({rules})")
    return rows_in, rows_valid, rows_rejected, parts


def _check_casts(path: Path, spec: Contract, rows_in: int) -> None:
    """A column whose values mostly fail to cast has the wrong type: fail, naming it and examples."""
    fails = (pl.scan_parquet(path).filter(pl.col(RULE) == "type").group_by(COLUMN)
             .agg(pl.len().alias("n"), *[pl.col(c).drop_nulls().unique().sort().head(5).alias(f"e:{c}")
                                          for c in spec.names])
             .sort("n", descending=True).collect())
    for row in fails.iter_rows(named=True):
        column, n = row[COLUMN], row["n"]
        if n / rows_in > spec.cast_error_tolerance:
            examples = row[f"e:{column}"]
            raise ContractError(
                f"column {column!r}: {n} of {rows_in} values ({n / rows_in:.1%}) cannot be cast to "
                f"{spec.column(column).type}, e.g. {examples}; above cast_error_tolerance "
                f"{spec.cast_error_tolerance:.1%} — fix the source or the contract's type")


def _load(bucket: Bucket) -> pl.DataFrame:
    return bucket if isinstance(bucket, pl.DataFrame) else pl.read_parquet(bucket)


def _lazy(buckets: list[Bucket]) -> pl.LazyFrame:
    frames = [b.lazy() if isinstance(b, pl.DataFrame) else pl.scan_parquet(b) for b in buckets]
    return frames[0] if len(frames) == 1 else pl.concat(frames)


def _spill(df: pl.DataFrame, path: Path) -> Path:
    """A bucket to disk between passes (raw Parquet: written once, read once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path, compression="uncompressed", statistics=False)
    return path


def _bucket_files(directory: Path, buckets: int) -> list[tuple[int, Bucket]]:
    out: list[tuple[int, Bucket]] = []
    for b in range(buckets):
        part = directory / f"{BUCKET}={b}"
        out += [(b, p) for p in sorted(part.glob("*.parquet"))]
    return out


def _forward_filled(deduped: list[Bucket], spec: Contract) -> dict[str, int]:
    cols = [c.name for c in spec.columns if c.fill is not None and c.fill.method == "forward"]
    if not cols:
        return {}
    row = (_lazy(deduped).select(pl.col(FFILL_PREFIX + c).sum().alias(c) for c in cols)
           .collect(engine="streaming"))
    return {c: int(row[c][0] or 0) for c in cols}


def manifest_head(dataset: str, version: str, parent: DatasetVersion | None,
                  spec: Contract | TextContract) -> dict[str, Any]:
    """What every version's manifest opens with: names, parent, time, and the contract it kept."""
    return {"dataset": dataset, "version": version, "parent": parent.version if parent else None,
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"), "description": spec.description,
            "contract": {"hash": spec.digest(), "body": spec.model_dump(mode="json")}}


def check_identity(counts: dict[str, int], dataset: str) -> None:
    total = counts["rows_out"] + counts["rows_quarantined"] + counts["rows_deduplicated"]
    if counts["rows_in"] != total:
        raise AccountingError(f"dataset {dataset}: rows_in {counts['rows_in']} != rows_out {counts['rows_out']} + "
                              f"quarantined {counts['rows_quarantined']} + deduplicated "
                              f"{counts['rows_deduplicated']} ({total}); not published")


def version_digest(files: list[Path], base: Path, contract_digest: str) -> str:
    digest = hashlib.sha256(contract_digest.encode())
    for path in files:
        digest.update(str(path.relative_to(base)).encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(8 * 1024 * 1024):
                digest.update(chunk)
    return digest.hexdigest()
