"""Tokenizer and token shards: deterministic per version, shards decode back to the stored text,
uint16 or uint32 by vocabulary, several shards read as one split, the job and S3 roots work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.settings import load_settings
from ingest.catalog import Catalog
from ingest.errors import ContractError
from ingest.pipeline import run_ingest
from ingest.text_contract import TokenizerSpec
from ingest.tokenizer import train_bpe
from ingest.tokens import build_token_dataset, open_token_split, rank_bounds, texts_of, token_dtype
from jobs import tokenize as job
from tests.storage.helpers import S3Server

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ("json", "csv.py", "textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "string.py", "bisect.py")
CONTRACT = {"kind": "text", "text": "text", "metadata": "path", "max_chars": 200_000,
            "split": {"validation_fraction": 0.25, "seed": 0}, "tokenizer": {"vocab_size": 600}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real corpus every machine has: a few standard-library modules, one document a file."""
    out = tmp_path_factory.mktemp("corpus")
    for name in FILES:
        source = STDLIB / name
        for path in [source] if source.is_file() else sorted(source.glob("*.py")):
            (out / f"{name.removesuffix('.py')}-{path.name}").write_bytes(path.read_bytes())
    return out


def ingest(corpus: Path, root: str, **changes) -> None:
    run_ingest(str(corpus), {**CONTRACT, **changes}, "pystd", root)


def decoded(split) -> list[str]:
    tokenizer = split.tokenizer()
    return [tokenizer.decode(doc.tolist(), skip_special_tokens=False) for doc in split.documents()]


def test_the_same_version_trains_the_same_tokenizer_file_in_a_fresh_process_with_one_thread(
        corpus: Path, root: str) -> None:
    ingest(corpus, root)
    manifest = build_token_dataset(root, "pystd")
    stored = Path(Catalog(root).latest("pystd").path) / "tokens" / manifest["tokenizer"]["id"] / "tokenizer.json"
    code = ("import sys, hashlib; from ingest.catalog import Catalog; from ingest.tokens import texts_of, "
            "tokenizer_spec; from ingest.tokenizer import train_bpe; v = Catalog(sys.argv[1]).latest('pystd'); "
            "t = train_bpe(iter(texts_of(v, 'train')), tokenizer_spec(v)); "
            "print(hashlib.sha256(t.to_str().encode()).hexdigest())")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAYON_NUM_THREADS": "1"}
    fresh = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, env=env, check=True)

    assert fresh.stdout.strip() == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert build_token_dataset(root, "pystd")["tokenizer"]["id"] == manifest["tokenizer"]["id"]


def test_shards_decode_back_to_the_stored_text_with_eos_between_documents(corpus: Path, root: str) -> None:
    ingest(corpus, root)
    manifest = build_token_dataset(root, "pystd")
    version = Catalog(root).latest("pystd")

    for split in ("train", "validation"):
        tokens = open_token_split(root, "pystd", "latest", split)
        assert decoded(tokens) == texts_of(version, split).to_list()
        starts = tokens.starts[0]
        assert (tokens.tokens[starts[1:] - 1] == manifest["eos_id"]).all()
        assert len(tokens) == manifest["splits"][split]["tokens"] == int(starts[-1])
    assert manifest["dtype"] == "uint16"
    assert open_token_split(root, "pystd", "latest", "train").tokens.dtype == np.uint16
    assert set(manifest["checksums"]) == {"tokenizer.json", "train-00000.bin", "train-00000.idx",
                                          "validation-00000.bin", "validation-00000.idx"}


def test_a_vocabulary_over_65535_tokens_is_stored_as_uint32(corpus: Path, root: str, tmp_path: Path) -> None:
    ingest(corpus, root)
    texts = texts_of(Catalog(root).latest("pystd"), "train")
    big = train_bpe(iter(texts), TokenizerSpec(vocab_size=600))
    big.add_tokens([f"<extra{i}>" for i in range(65_600)])
    big.save(str(tmp_path / "big.json"))
    manifest = build_token_dataset(root, "pystd", tokenizer_file=str(tmp_path / "big.json"))

    assert manifest["vocab_size"] > 65_535 and manifest["dtype"] == "uint32"
    assert manifest["tokenizer"]["origin"]["kind"] == "file"
    tokens = open_token_split(root, "pystd", "latest", "train")
    assert tokens.tokens.dtype == np.uint32 and decoded(tokens) == texts.to_list()
    assert (token_dtype(65_535), token_dtype(65_536)) == (np.dtype("<u2"), np.dtype("<u4"))


def test_small_shards_never_split_a_document_and_read_as_one_split(corpus: Path, root: str) -> None:
    ingest(corpus, root, tokenizer={"vocab_size": 600, "shard_tokens": 12_000, "max_tokens": 6000})
    manifest = build_token_dataset(root, "pystd")
    train = manifest["splits"]["train"]
    tokens = open_token_split(root, "pystd", "latest", "train")
    kept = [t for t in texts_of(Catalog(root).latest("pystd"), "train").to_list()
            if len(tokens.tokenizer().encode(t).ids) <= 6000]

    assert len(train["shards"]) > 1 and all(s["tokens"] <= 12_000 for s in train["shards"])
    assert train["documents_in"] == train["documents"] + train["skipped"]["too_many_tokens"]
    assert train["skipped"]["too_many_tokens"] > 0 and decoded(tokens) == kept
    whole = np.concatenate(tokens.shards)
    assert np.array_equal(tokens.window(1000, 9000), whole[1000:9000])
    halves = [tokens.rank_window(r, 2) for r in (0, 1)]
    assert halves[0].size == halves[1].size == len(tokens) // 2
    assert np.array_equal(np.concatenate(halves), whole[:2 * (len(tokens) // 2)])
    assert rank_bounds(10, 2, 3) == (6, 9)


def test_the_tokenize_job_prints_one_result_line_and_errors_are_one_line(corpus: Path, root: str,
                                                                         capsys: pytest.CaptureFixture) -> None:
    ingest(corpus, root)
    summary = job.main(["--dataset", "pystd", "--root", root, "--vocab-size", "700"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("RAYLINE_RESULT "))
    assert json.loads(line.removeprefix("RAYLINE_RESULT "))["tokenizer"] == summary["tokenizer"]
    assert summary["vocab_size"] == 700

    with pytest.raises(SystemExit) as exit_:
        job.main(["--dataset", "pystd", "--root", root, "--tokenizer", str(root) + "/missing.json"])
    assert exit_.value.code == 7
    assert "tokenizer file" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(ContractError, match="eos"):
        build_token_dataset(root, "pystd", special_tokens=["<pad>"])


def test_token_shards_are_published_and_read_back_on_s3(corpus: Path, tmp_path: Path, s3: S3Server) -> None:
    s3.client().create_bucket(Bucket="tokens")
    settings = load_settings(state_dir=tmp_path / "state", s3_endpoint_url=s3.endpoint)
    run_ingest(str(corpus), CONTRACT, "pystd", "s3://tokens/catalog", settings=settings)
    manifest = build_token_dataset("s3://tokens/catalog", "pystd")

    tokens = open_token_split("s3://tokens/catalog", "pystd", "latest", "validation")
    assert len(tokens) == manifest["splits"]["validation"]["tokens"]
    assert decoded(tokens) == texts_of(Catalog("s3://tokens/catalog").latest("pystd"), "validation").to_list()


def test_rayline_ingest_takes_a_text_contract_and_rayline_tokenize_writes_the_shards(corpus: Path,
                                                                                     tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cluster.cli.main import app

    state, cat = ["--state-dir", str(tmp_path / "state")], str(tmp_path / "cat")
    contract = ROOT / "examples" / "contracts" / "pystdlib_text.yaml"
    ingested = CliRunner().invoke(app, [*state, "ingest", "--source", str(corpus), "--contract", str(contract),
                                        "--dataset", "pystdlib", "--root", cat])
    assert ingested.exit_code == 0, ingested.output
    tokenized = CliRunner().invoke(app, [*state, "tokenize", "--dataset", "pystdlib", "--root", cat,
                                         "--vocab-size", "512"])
    assert tokenized.exit_code == 0, tokenized.output
    assert "tokenizer tok-" in tokenized.output and "uint16" in tokenized.output
    assert len(open_token_split(cat, "pystdlib", "latest", "train")) > 0


def test_staging_left_by_a_killed_tokenize_is_removed_once_stale_and_a_live_one_is_kept(corpus: Path,
                                                                                      root: str) -> None:
    ingest(corpus, root)
    tokens = Path(Catalog(root).latest("pystd").path) / "tokens"
    old, live = tokens / ".staging-tok-dead-1", tokens / ".staging-tok-live-2"
    for folder in (old, live):
        folder.mkdir(parents=True)
        (folder / "train-00000.bin").write_bytes(b"\0" * 8)
    day_ago = time.time() - 25 * 3600
    for path in (old / "train-00000.bin", old):
        os.utime(path, (day_ago, day_ago))
    build_token_dataset(root, "pystd")
    assert not old.exists() and live.exists()


def test_token_drift_compares_against_the_parent_versions_shards(corpus: Path, root: str, tmp_path: Path) -> None:
    ingest(corpus, root)
    first = build_token_dataset(root, "pystd")
    assert first["drift"]["compared"] is False
    prose = tmp_path / "prose"
    prose.mkdir()
    for i in range(12):
        (prose / f"note-{i}.txt").write_text(" ".join(f"plain words about trains number {j}" for j in range(i * 20)))
    ingest(prose, root)
    second = build_token_dataset(root, "pystd")

    report = second["drift"]
    assert report["compared"] and report["parent"] == first["version"]
    assert set(report["columns"]) == {"tokens_per_document", "tokens"}
    assert "tokens" in report["breached"]  # Python source → English notes: the token mix moved
    assert second["profile"]["distributions"]["tokens"]["frequencies"]["<other>"] >= 0
