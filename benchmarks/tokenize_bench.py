"""Tokenization benchmark: the token-shard pipeline vs a plain single-process ``tokenizers`` loop.

Workload: the Python standard library's own ``.py`` files (every machine has them; nothing is
downloaded), ingested once as a text dataset; a byte-level BPE trained once on its train split.
Then, alternating, ``--repeats`` times each:

- pipeline: ``ingest.tokens.build_token_dataset`` with that tokenizer file (no training): read
  both splits, ``encode_batch`` in batches of documents (the tokenizer's Rust threads), write the
  packed shards, index files, checksums and manifest;
- baseline: ``tokenizer.encode(doc)`` for each document in one loop, ids kept in a list (no
  writing at all: the baseline does less work than the pipeline).

Throughput is tokens per second of wall time, medians over the repeats.

    .venv/bin/python benchmarks/tokenize_bench.py [--repeats 5] [--max-files 400] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from importlib.metadata import version as package_version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import MIN_REPEATS, Report, summarize  # noqa: E402

CONTRACT = {"kind": "text", "text": "text", "metadata": "path", "max_chars": 2_000_000,
            "split": {"validation_fraction": 0.1, "seed": 0}}


def corpus(work: Path, max_files: int) -> tuple[Path, int]:
    """Up to ``max_files`` standard-library modules (sorted by path), copied into one folder."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    out = work / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    size = 0
    for i, path in enumerate(paths[:max_files]):
        data = path.read_bytes()
        (out / f"{i:05d}-{path.name}").write_bytes(data)
        size += len(data)
    return out, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--max-files", type=int, default=400)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()

    from ingest.catalog import Catalog
    from ingest.pipeline import run_ingest
    from ingest.text_contract import TokenizerSpec
    from ingest.tokenizer import train_bpe
    from ingest.tokens import TOKENS, build_token_dataset, texts_of

    work = Path(tempfile.mkdtemp(prefix="tokenize-bench-"))
    try:
        folder, size = corpus(work, args.max_files)
        root = str(work / "catalog")
        version = run_ingest(str(folder), CONTRACT, "stdlib", root)
        texts = [*texts_of(version, "train").to_list(), *texts_of(version, "validation").to_list()]
        tokenizer = train_bpe(iter(texts_of(version, "train")), TokenizerSpec(vocab_size=args.vocab_size))
        tokenizer.save(str(work / "tokenizer.json"))
        tokens_dir = Path(Catalog(root).get("stdlib", version.version).path) / TOKENS
        report = Report("tokenize", f"{len(texts)} stdlib .py documents ({size / 1e6:.1f} MB), byte-level BPE "
                                    f"vocab {args.vocab_size}, tokenizers {package_version('tokenizers')}")
        load = os.getloadavg()
        seconds: dict[str, list[float]] = {"pipeline": [], "baseline": []}
        cpu: dict[str, list[float]] = {"pipeline": [], "baseline": []}
        counted: dict[str, int] = {}

        def pipeline() -> None:
            shutil.rmtree(tokens_dir, ignore_errors=True)
            manifest = build_token_dataset(root, "stdlib", version.version, tokenizer_file=str(work / "tokenizer.json"))
            counted["pipeline"] = sum(s["tokens"] - s["documents"] for s in manifest["splits"].values())  # no eos

        def baseline() -> None:
            ids = [tokenizer.encode(doc, add_special_tokens=False).ids for doc in texts]
            counted["baseline"] = sum(len(x) for x in ids)

        for i in range(args.repeats):
            order = [("pipeline", pipeline), ("baseline", baseline)]
            for impl, run in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
                start, cpu0 = time.perf_counter(), time.process_time()
                run()
                seconds[impl].append(time.perf_counter() - start)
                cpu[impl].append(time.process_time() - cpu0)
            total = counted["pipeline"]
            assert counted["baseline"] == total, "both sides must produce the same tokens"
            for impl in seconds:
                report.add(repeat=i, impl=impl, seconds=seconds[impl][-1], cpu_s=cpu[impl][-1], tokens=total,
                           tokens_per_s=total / seconds[impl][-1])
            print(f"repeat {i}: pipeline {seconds['pipeline'][-1]:.2f} s, baseline {seconds['baseline'][-1]:.2f} s, "
                  f"{total:,} tokens, load {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        for impl, values in seconds.items():
            s = summarize(values)
            rows.append({"impl": impl, "median_s": s["median"], "p95_s": s["p95"], "min_s": s["min"],
                         "median_cpu_s": summarize(cpu[impl])["median"], "median_tokens_per_s": total / s["median"],
                         "best_tokens_per_s": total / s["min"]})
        ratio = summarize(seconds["baseline"])["median"] / summarize(seconds["pipeline"])["median"]
        report.section("Throughput", report.table(rows) + f"\n\nPipeline over baseline (median/median): "
                       f"**{ratio:.2f}×**, the pipeline also writing shards, index, checksums and manifest. "
                       f"{os.cpu_count()} cores; load average at start {load[0]:.1f}, at end "
                       f"{os.getloadavg()[0]:.1f} (a shared machine: wall times include neighbours' load).")
        out = report.write(" ".join(["benchmarks/tokenize_bench.py", *sys.argv[1:]]))
        print(f"pipeline {total / summarize(seconds['pipeline'])['median']:,.0f} tokens/s, baseline "
              f"{total / summarize(seconds['baseline'])['median']:,.0f} tokens/s ({ratio:.2f}x); report in {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
