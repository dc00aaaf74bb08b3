"""Source files: resolve paths, globs and fsspec URLs; checksum and pre-flight them; scan lazily.

Every file is read once up front for its checksum (recorded in the manifest); text formats are
UTF-8-checked in the same pass, so a wrong encoding fails naming the file and byte offset
instead of surfacing later as a bare Polars error. Scans are lazy: nothing is loaded whole.
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ingest.errors import SourceError

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson"}
CHUNK = 8 * 1024 * 1024
SOURCE_COLUMN = "_source"


@dataclass(frozen=True)
class SourceFile:
    path: str
    format: str
    bytes: int
    checksum: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_options(endpoint_url: str | None) -> dict[str, str] | None:
    """Polars/object-store options for an S3-compatible endpoint (MinIO, Ceph …)."""
    if not endpoint_url:
        return None
    opts = {"aws_endpoint_url": endpoint_url}
    if endpoint_url.startswith("http://"):
        opts["aws_allow_http"] = "true"
    return opts


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _format_of(path: str) -> str:
    name = path.lower()
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise SourceError(f"source {path}: unknown format (expected one of {sorted(set(FORMATS))})")
    return fmt


def resolve(source: str | list[str], endpoint_url: str | None = None) -> list[SourceFile]:
    """Expand paths/globs/URLs into checked files of one format, in a stable (sorted) order."""
    patterns = [source] if isinstance(source, str) else list(source)
    if not patterns:
        raise SourceError("no source given")
    files: list[SourceFile] = []
    for pattern in patterns:
        pattern = pattern.removeprefix("file://")
        if _is_url(pattern):
            files += _resolve_remote(pattern, endpoint_url)
            continue
        matches = sorted(globlib.glob(pattern)) if globlib.has_magic(pattern) else [pattern]
        if not matches:
            raise SourceError(f"source {pattern}: no files match")
        for match in matches:
            files.append(_local_file(match))
    formats = sorted({f.format for f in files})
    if len(formats) > 1:
        raise SourceError(f"sources mix formats {formats}; ingest one format per run")
    return files


def _local_file(path: str) -> SourceFile:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"source {path}: no such file")
    fmt = _format_of(path)
    size = p.stat().st_size
    if size == 0:
        raise SourceError(f"source {path}: file is empty")
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")() if fmt != "parquet" and not path.endswith((".gz", ".zst")) \
        else None
    offset = 0
    with open(p, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if decoder is not None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise SourceError(f"source {path}: not UTF-8 at byte {offset + exc.start} "
                                      f"({chunk[exc.start:exc.start + 4]!r}); re-encode the file as UTF-8") from None
            offset += len(chunk)
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SourceError(f"source {path}: ends inside a UTF-8 sequence (truncated or not UTF-8)") from None
    if fmt == "parquet":
        _check_parquet(path)
    return SourceFile(str(p.resolve()), fmt, size, "sha256:" + digest.hexdigest())


def _check_parquet(path: str, filesystem: Any = None) -> None:
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path, filesystem=filesystem)
    except Exception as exc:
        raise SourceError(f"source {path}: not a readable Parquet file (truncated or corrupt): "
                          f"{str(exc).splitlines()[0]}") from None


def _resolve_remote(pattern: str, endpoint_url: str | None) -> list[SourceFile]:
    import fsspec

    kwargs: dict[str, Any] = {}
    if endpoint_url and pattern.startswith(("s3://", "s3a://")):
        kwargs["client_kwargs"] = {"endpoint_url": endpoint_url}
    try:
        fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=kwargs)
        paths = sorted(fs.glob(pattern)) if globlib.has_magic(pattern) else paths
    except Exception as exc:
        raise SourceError(f"source {pattern}: cannot list: {str(exc).splitlines()[0]}") from None
    if not paths:
        raise SourceError(f"source {pattern}: no files match")
    protocol = pattern.split("://", 1)[0]
    out = []
    for path in paths:
        url = path if "://" in path else f"{protocol}://{path}"
        info = fs.info(path)
        size = int(info.get("size") or 0)
        if size == 0:
            raise SourceError(f"source {url}: file is empty")
        tag = info.get("ETag") or info.get("etag") or info.get("md5") or fs.checksum(path)
        out.append(SourceFile(url, _format_of(url), size, f"etag:{str(tag).strip(chr(34))}"))
    return out


def scan(files: list[SourceFile], endpoint_url: str | None = None) -> pl.LazyFrame:
    """One lazy frame over all files, text columns kept as text (the contract casts them)."""
    paths = [f.path for f in files]
    opts = storage_options(endpoint_url)
    fmt = files[0].format
    try:
        if fmt == "csv":
            sep = "\t" if paths[0].lower().removesuffix(".gz").endswith(".tsv") else ","
            return pl.scan_csv(paths, separator=sep, infer_schema=False, include_file_paths=SOURCE_COLUMN,
                               storage_options=opts, raise_if_empty=True)
        if fmt == "parquet":
            return pl.scan_parquet(paths, include_file_paths=SOURCE_COLUMN, storage_options=opts,
                                   missing_columns="insert", extra_columns="ignore")
        return pl.scan_ndjson(paths, include_file_paths=SOURCE_COLUMN, storage_options=opts,
                              infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise source_error(paths, exc) from None


def source_schema(lf: pl.LazyFrame, files: list[SourceFile]) -> pl.Schema:
    try:
        return lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise source_error([f.path for f in files], exc) from None


def explain(exc: BaseException) -> str:
    """A Polars/IO error as one short line (Polars quotes whole CSV fields, hints included)."""
    text = str(exc)
    column = re.search(r"at column '([^']+)'", text)
    where = f" in column {column.group(1)!r}" if column else ""
    if "not properly escaped" in text or ("could not parse" in text and '`"' in text):
        start = text.split("`", 2)[1] if "`" in text else ""
        return f"unbalanced quote{where} near {start.splitlines()[0][:60]!r} (bad CSV quoting)"
    if "more fields than defined" in text:
        return "a row has more fields than the header (ragged CSV or an unquoted separator)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200] + ("…" if len(first) > 200 else "") + where


def source_error(paths: list[str], exc: BaseException) -> SourceError:
    return SourceError(f"cannot read {_names(paths)}: {explain(exc)}")


def _names(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
