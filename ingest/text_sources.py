"""Text sources: tables (NDJSON, Parquet, CSV, read as the table path reads them) or folders of files.

A folder is one document a file: every file under it whose suffix the contract lists (``.txt``,
``.md``, ``.py`` by default), in sorted path order, with its path relative to the folder as the
``path`` metadata column. A file that is not UTF-8 is not a failed run: it becomes a row whose
text is null and whose ``_decode_error`` says where decoding failed, and the contract's
``encoding`` rule quarantines it with that reason. The manifest records a folder as one source
whose checksum covers every file's name and sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl

from ingest.errors import ContractError, SourceError
from ingest.rules import ROW
from ingest.sources import SOURCE_COLUMN, resolve, scan, source_error, source_schema
from ingest.text_contract import TEXT, TextContract

DECODE_ERROR = "_decode_error"
PATH = "path"  # a folder source's metadata column: the file's path relative to the folder


def read_text_sources(source: str | list[str], spec: TextContract,
                      endpoint_url: str | None = None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """All documents as one frame (``_row``, ``_source``, the contract's columns, ``_decode_error``)
    and the manifest's source entries."""
    patterns = [source] if isinstance(source, str) else list(source)
    if not patterns:
        raise SourceError("no source given")
    folders = [p for p in patterns if "://" not in p and Path(p).is_dir()]
    if folders and len(folders) != len(patterns):
        raise SourceError("sources mix folders and files; ingest one kind per run")
    if folders:
        parts = [_read_folder(Path(p), spec) for p in folders]
        frame = pl.concat([f for f, _ in parts], how="vertical")
        entries = [e for _, e in parts]
    else:
        frame, entries = _read_tables(patterns, spec, endpoint_url)
    return frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64)), entries


def _read_folder(folder: Path, spec: TextContract) -> tuple[pl.DataFrame, dict[str, Any]]:
    suffixes = {s.lower() for s in spec.extensions}
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not paths:
        raise SourceError(f"source {folder}: no {sorted(suffixes)} files under it")
    sources, names, texts, errors = [], [], [], []
    digest, total = hashlib.sha256(), 0
    for path in paths:
        data = path.read_bytes()
        name = str(path.relative_to(folder))
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        total += len(data)
        text, error = decode_utf8(data)
        sources.append(str(path.resolve()))
        names.append(name)
        texts.append(text)
        errors.append(error)
    _check_columns(spec, [TEXT, PATH], str(folder))
    frame = pl.DataFrame({SOURCE_COLUMN: sources, TEXT: texts, PATH: names, DECODE_ERROR: errors},
                         schema={SOURCE_COLUMN: pl.String, TEXT: pl.String, PATH: pl.String, DECODE_ERROR: pl.String})
    entry = {"path": str(folder.resolve()), "format": "folder", "files": len(paths), "bytes": total,
             "extensions": sorted(suffixes), "checksum": "sha256:" + digest.hexdigest()}
    return frame.select(SOURCE_COLUMN, *spec.names, DECODE_ERROR), entry


def decode_utf8(data: bytes) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) when ``data`` is not UTF-8."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 at byte {exc.start} ({data[exc.start:exc.start + 4]!r})"


def _read_tables(patterns: list[str], spec: TextContract,
                 endpoint_url: str | None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    files = resolve(patterns, endpoint_url)
    lf = scan(files, endpoint_url)
    schema = source_schema(lf, files)
    _check_columns(spec, schema.names(), files[0].path if len(files) == 1 else f"{len(files)} source files")
    try:
        frame = lf.select(SOURCE_COLUMN, *spec.names).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise source_error([f.path for f in files], exc) from None
    errors = pl.Series(DECODE_ERROR, [None] * frame.height, dtype=pl.String)
    for name in spec.text:  # Parquet can hold text as bytes: decoded here, per row, as a folder's files are
        if frame.schema[name] == pl.Binary:
            decoded = [decode_utf8(b) if b is not None else (None, None) for b in frame[name].to_list()]
            frame = frame.with_columns(pl.Series(name, [t for t, _ in decoded], dtype=pl.String))
            errors = pl.Series(DECODE_ERROR, [e if e is not None else old for (_, e), old in
                                              zip(decoded, errors.to_list(), strict=True)], dtype=pl.String)
    frame = frame.with_columns(errors, *[pl.col(n).cast(pl.String) for n in spec.names])
    return frame, [f.to_dict() for f in files]


def _check_columns(spec: TextContract, present: list[str], where: str) -> None:
    missing = [n for n in spec.names if n not in present]
    if missing:
        shown = [n for n in present if not n.startswith("_")]
        raise ContractError(f"{where}: missing column(s) {missing} named by the text contract; the source has {shown}")
