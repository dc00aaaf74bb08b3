"""Text ingest: contract rules quarantine with reasons, duplicates are removed and listed, the
accounting identity holds, every source kind reads, versions publish like tables (local and S3)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cluster.settings import load_settings
from ingest.catalog import Catalog
from ingest.errors import ContractError
from ingest.pipeline import run_ingest
from ingest.text_contract import load_text_contract
from ingest.text_rules import content_hash, in_validation
from tests.storage.helpers import S3Server

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DOCS = [
    "def add(a, b):\n    return a + b\n",
    "Plain prose about trains and tracks.\r\nSecond line.",
    "DEF   add(a, b):\n  return A + B\n",  # the first document again, modulo case and whitespace
    "   \n\t ",  # empty
    "mail me at jane.doe@example.org please",  # pii: email
    "key AKIAABCDEFGHIJKLMNOP in a config",  # pii: aws access key
    "x" * 500,  # too long
    "bad \ufffd decode",  # encoding
    "short",  # too short
    "Caf\u0065\u0301 is written two ways in Unicode.",  # NFC turns e + accent into é
]


def spec(**changes: Any) -> dict[str, Any]:
    base = {"kind": "text", "text": "body", "metadata": ["author"], "min_chars": 6, "max_chars": 400,
            "pii": ["email", "aws_access_key"], "split": {"validation_fraction": 0.3, "seed": 1}}
    return {**base, **changes}


def frame(docs: list[str] = DOCS) -> pl.DataFrame:
    return pl.DataFrame({"body": docs, "author": [f"a{i}" for i in range(len(docs))]})


def all_rows(version) -> pl.DataFrame:
    return version.lazy().collect()


def test_rules_quarantine_each_bad_document_with_its_reason_and_the_identity_holds(tmp_path: Path,
                                                                                   root: str) -> None:
    frame().write_ndjson(tmp_path / "docs.ndjson")
    version = run_ingest(str(tmp_path / "docs.ndjson"), spec(), "notes", root)

    counts = version.manifest["counts"]
    assert counts["rows_in"] == len(DOCS)
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"] + counts["rows_deduplicated"]
    assert (counts["rows_out"], counts["rows_quarantined"], counts["rows_deduplicated"]) == (3, 6, 1)
    q = version.quarantine().collect().sort("_row")
    assert q.select("_row", "_rule").rows() == [(3, "empty"), (4, "pii"), (5, "pii"), (6, "too_long"),
                                                (7, "encoding"), (8, "too_short")]
    reasons = dict(zip(q["_row"], q["_reason"], strict=True))
    assert reasons[4] == "matches PII pattern 'email'" and reasons[5] == "matches PII pattern 'aws_access_key'"
    assert reasons[6] == "500 characters, above max_chars 400" and reasons[8] == "5 characters, below min_chars 6"
    assert q.filter(pl.col("_row") == 4)["author"].item() == "a4"  # metadata kept beside the rejected text
    by_rule = {(r["_rule"]): r["rows"] for r in version.manifest["quarantine"]["by_rule"]}
    assert by_rule == {"pii": 2, "empty": 1, "too_long": 1, "encoding": 1, "too_short": 1}


def test_exact_duplicates_by_normalised_content_are_removed_and_listed(tmp_path: Path, root: str) -> None:
    frame().write_parquet(tmp_path / "docs.parquet")
    version = run_ingest(str(tmp_path / "docs.parquet"), spec(), "notes", root)

    kept = all_rows(version)
    assert "DEF   add(a, b):\n  return A + B\n" not in kept["text"].to_list()
    dups = pl.read_parquet(Path(version.path) / version.manifest["duplicates"]["path"])
    assert dups.select("_row", "duplicate_of", "_rule").rows() == [(2, 0, "exact")]
    assert version.manifest["duplicates"]["exact"] == 1
    assert content_hash(DOCS[0]) == content_hash(DOCS[2])


def test_stored_text_is_nfc_with_newline_line_ends_and_split_follows_the_content_hash(tmp_path: Path,
                                                                                      root: str) -> None:
    frame().write_csv(tmp_path / "docs.csv")
    version = run_ingest(str(tmp_path / "docs.csv"), spec(), "notes", root)

    rows = all_rows(version)
    texts = rows["text"].to_list()
    assert "Café is written two ways in Unicode." in texts
    assert "Plain prose about trains and tracks.\nSecond line." in texts
    for text, split, digest in rows.select("text", "split", "content_hash").iter_rows():
        assert digest == content_hash(text)
        assert (split == "validation") == in_validation(digest, 1, 0.3)
    assert version.manifest["schema"] == {"text": "String", "content_hash": "String", "chars": "UInt32",
                                          "author": "String"}


def test_near_duplicates_are_removed_with_minhash_when_the_contract_asks(tmp_path: Path, root: str) -> None:
    base = " ".join(f"word{i}" for i in range(200))
    docs = [base, base.replace("word150", "changed"), " ".join(f"other{i}" for i in range(200))]
    frame(docs).write_ndjson(tmp_path / "docs.ndjson")
    near = spec(deduplicate={"exact": True, "near": {"threshold": 0.8, "num_perm": 128, "shingle_words": 3}},
                max_chars=10_000)
    version = run_ingest(str(tmp_path / "docs.ndjson"), near, "near", root)

    assert version.manifest["counts"]["rows_deduplicated"] == 1
    assert version.manifest["duplicates"]["near"] == 1
    assert sorted(all_rows(version)["author"].to_list()) == ["a0", "a2"]


def test_a_folder_of_stdlib_files_is_one_document_a_file_with_its_path(tmp_path: Path, root: str) -> None:
    """A small real corpus every machine has: the standard library's ``json`` package (a few files),
    plus a file that is not UTF-8, which is quarantined with the byte offset rather than failing the run."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = sorted(p.name for p in (STDLIB / "json").glob("*.py"))
    for name in names:
        (corpus / name).write_bytes((STDLIB / "json" / name).read_bytes())
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait, long enough".encode("latin-1"))
    (corpus / "skipped.bin").write_bytes(b"not listed in extensions")
    folder = {"kind": "text", "text": "text", "metadata": "path", "pii": []}
    version = run_ingest(str(corpus), folder, "stdlib", root)

    counts = version.manifest["counts"]
    assert counts["rows_in"] == len(names) + 1
    assert sorted(all_rows(version)["path"].to_list()) == names
    q = version.quarantine().collect()
    assert q.select("path", "_rule", "_reason").rows() == [
        ("latin1.txt", "encoding", "not UTF-8 at byte 3 (b'\\xe9 au')")]
    source = version.manifest["sources"][0]
    assert (source["format"], source["files"]) == ("folder", len(names) + 1)


def test_a_contract_naming_a_missing_column_or_unknown_pii_fails_in_one_line(tmp_path: Path, root: str) -> None:
    frame().write_ndjson(tmp_path / "docs.ndjson")
    with pytest.raises(ContractError, match=r"missing column\(s\) \['title'\]"):
        run_ingest(str(tmp_path / "docs.ndjson"), spec(text=["title", "body"]), "notes", root)
    with pytest.raises(ContractError, match=r"unknown pii pattern.*'ssn'"):
        load_text_contract(spec(pii=["ssn"]))
    assert not Path(root, "notes").exists() or not Catalog(root).versions("notes")


def test_same_documents_same_version_and_latest_moves_to_a_new_one(tmp_path: Path, root: str) -> None:
    frame().write_ndjson(tmp_path / "docs.ndjson")
    first = run_ingest(str(tmp_path / "docs.ndjson"), spec(), "notes", root)
    again = run_ingest(str(tmp_path / "docs.ndjson"), spec(), "notes", root)
    assert again.version == first.version

    frame([*DOCS, "A new document arrives today."]).write_ndjson(tmp_path / "docs.ndjson")
    second = run_ingest(str(tmp_path / "docs.ndjson"), spec(), "notes", root)
    catalog = Catalog(root)
    assert second.version != first.version and catalog.latest_version("notes") == second.version
    assert second.manifest["parent"] == first.version
    assert second.manifest["drift"]["compared"] and set(second.manifest["drift"]["columns"]) == {"chars", "vocabulary"}
    manifest = json.loads((Path(second.path) / "manifest.json").read_text())
    assert set(manifest["checksums"]) >= {"split=train/part-00000.parquet", "quarantine/contract.parquet"}


def test_a_text_version_publishes_on_s3_with_latest(tmp_path: Path, s3: S3Server) -> None:
    s3.client().create_bucket(Bucket="text")
    frame().write_ndjson(tmp_path / "docs.ndjson")
    settings = load_settings(state_dir=tmp_path / "state", s3_endpoint_url=s3.endpoint)
    version = run_ingest(str(tmp_path / "docs.ndjson"), spec(), "notes", "s3://text/catalog", settings=settings)

    catalog = Catalog("s3://text/catalog")
    assert catalog.latest_version("notes") == version.version
    assert catalog.get("notes", "latest").lazy().collect().height == 3
