"""A trained GPT in the registry, as others use it: real ingest and tokenizer, real Ray Train (2 CPU
workers), real MLflow server. One fit covers registration with lineage and perplexity, loading the
version downloaded from the registry with only transformers + torch, the perplexity gate refusing
a model above its bound, and ``jobs.evaluate`` (perplexity and sampled completions).

Training reads the token dataset's packed shards (``data: {dataset, version}``), so the registered
version's tokenizer is the one its data was tokenized with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ingest.catalog import Catalog
from ingest.pipeline import run_ingest
from ingest.tokens import build_token_dataset, open_token_split
from jobs import evaluate as evaluate_job
from models.packaging import HF_PATH, LanguageModelArtifact, hf_dir, load_served
from train import tracking, trainer
from train.config import RegistrationSection, parse_config
from train.lm_evaluation import evaluate_language_model

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
DATASET, MODEL_NAME, SEQ = "lm-pystd", "lm-hf-test", 16
CONTRACT = {"kind": "text", "text": "text", "metadata": "path", "max_chars": 200_000,
            "split": {"validation_fraction": 0.3, "seed": 0}, "tokenizer": {"vocab_size": 300}}
RAYLINE_PACKAGES = ("models", "train", "ingest", "cluster", "deployments", "jobs", "rayline")
E2E_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def token_dataset(settings):
    """Seven standard-library modules ingested as a text dataset and tokenized (BPE, 300 tokens)."""
    corpus = Path(settings.state_dir) / "lm-corpus"
    corpus.mkdir(exist_ok=True)
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "string.py", "bisect.py", "colorsys.py"):
        (corpus / name).write_bytes((STDLIB / name).read_bytes())
    root = str(settings.datasets_root)
    run_ingest(str(corpus), CONTRACT, DATASET, root)
    manifest = build_token_dataset(root, DATASET)
    return Catalog(root).latest(DATASET), manifest


def _config(**registration):
    return parse_config({
        "run_name": "lm-hf-test", "seed": 3,
        "model": {"name": "gpt", "params": {"n_layer": 1, "n_embd": 32, "n_head": 2, "bias": False, "seq_len": SEQ}},
        "data": {"dataset": DATASET, "version": "latest"},
        "batch_size": 16, "epochs": 1, "optimizer": {"lr": 0.01}, "log_every": 1,
        "registration": {"model_name": MODEL_NAME, "metric": "val_perplexity", "threshold": 1e6,
                         "alias": "challenger", **registration},
    })


@pytest.fixture(scope="module")
def registered(ray_cluster, settings, token_dataset):
    config = _config()
    outcome = trainer.train(config, settings)
    assert outcome.registered is not None, outcome.gate_reason
    return config, outcome


def _training_module(outcome):
    uri = f"models:/{outcome.registered.name}/{outcome.registered.version}"
    return mlflow.pytorch.load_model(uri, map_location="cpu").eval()  # the trained models.gpt.GPT


LOADER = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :{SEQ}]
with torch.no_grad():
    torch.save({{"ids": ids, "logits": model(input_ids=ids).logits}}, folder + "/../out.pt")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {RAYLINE_PACKAGES!r})))
"""


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_registered_lm_downloads_and_loads_with_only_transformers_with_lineage_and_perplexity(
        registered, token_dataset, settings, tmp_path):
    _, outcome = registered
    version, manifest = token_dataset
    info = outcome.registered
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{info.name}/{info.version}", dst_path=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOADER, str(local / HF_PATH), "def shlex_split(s):\n    return s"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    out = torch.load(local / HF_PATH / ".." / "out.pt")
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], _training_module(outcome)(out["ids"]), atol=1e-5, rtol=0)

    stored = Path(version.path) / "tokens" / manifest["tokenizer"]["id"] / "tokenizer.json"
    tags = info.tags
    assert (tags["dataset"], tags["dataset_version"]) == (DATASET, version.version)
    assert tags["tokenizer"] == manifest["tokenizer"]["id"]
    assert tags["tokenizer_sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert tags["git_commit"] and tags["format"] == "hf-gpt2"
    assert float(tags["val_perplexity"]) == pytest.approx(math.exp(float(tags["val_loss"])), rel=1e-4)
    assert "challenger" in info.aliases
    with pytest.raises(LanguageModelArtifact, match=HF_PATH):
        load_served(f"models:/{info.name}@challenger")


def test_the_gate_never_passes_a_non_finite_perplexity():
    section = RegistrationSection(model_name="m", metric="val_perplexity")  # no threshold: anything finite
    assert tracking.gate(section, {"val_perplexity": 12.5})[0]
    passed, reason = tracking.gate(section, {"val_perplexity": float("nan")})
    assert not passed and "not finite" in reason
    assert not tracking.gate(section.model_copy(update={"threshold": 1e9}), {"val_perplexity": float("inf")})[0]


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_perplexity_gate_refuses_a_model_above_the_bound(registered, settings):
    config, outcome = registered
    bound = config.registration.model_copy(update={"threshold": outcome.metrics["val_perplexity"] * 0.5})
    strict = config.model_copy(update={"registration": bound})
    registry = tracking.Registry(settings)
    before = [v.version for v in registry.versions(MODEL_NAME)]
    retry = tracking.Outcome(run_id=outcome.run_id, metrics=outcome.metrics)
    plan = type("Plan", (), {"task": "language_modeling", "preprocessing": None, "dataset_version": None,
                             "description": {"dataset": "synthetic_tokens"}})()
    result = tracking.finish(registry, strict, plan, retry, _training_module(outcome), None)

    assert result.registered is None and result.gate_reason.startswith("val_perplexity=")
    assert ">" in result.gate_reason and [v.version for v in registry.versions(MODEL_NAME)] == before
    assert registry.client.get_run(outcome.run_id).data.tags["rayline.registration"].startswith("blocked")


@pytest.mark.slow
@pytest.mark.timeout(E2E_TIMEOUT_S)
def test_evaluate_job_measures_the_training_modules_perplexity_and_logs_completions(
        registered, settings, monkeypatch, capsys):
    _, outcome = registered
    for key, value in {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "DATASETS_ROOT": settings.datasets_root,
                       "STATE_DIR": settings.state_dir, "LOG_FORMAT": "text"}.items():
        monkeypatch.setenv(f"RAYLINE_{key}", str(value))
    summary = evaluate_job.main(["--model", f"models:/{MODEL_NAME}@challenger", "--dataset", f"{DATASET}/latest"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RAYLINE_RESULT ")]

    split = open_token_split(str(settings.datasets_root), DATASET, "latest", "validation")
    stream = torch.from_numpy(split.window(0, len(split)).astype(np.int64))
    count = (len(stream) - 1) // SEQ  # windows of SEQ + 1 tokens overlapping by one
    rows = torch.stack([stream[i * SEQ:i * SEQ + SEQ + 1] for i in range(count)])
    with torch.no_grad():
        logits = _training_module(outcome)(rows[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1)).item()
    assert summary["metrics"]["eval_loss"] == pytest.approx(loss, abs=1e-4)
    assert summary["metrics"]["eval_perplexity"] == pytest.approx(math.exp(loss), abs=1e-4 * math.exp(loss))
    assert summary["metrics"]["eval_tokens"] == count * SEQ

    completions = summary["completions"]
    texts = [t for t in (split.tokenizer().decode(d.tolist(), skip_special_tokens=False) for d in split.documents())]
    assert len(completions) == 3 and all(c["new_tokens"] > 0 for c in completions)
    assert [any(t.startswith(c["prompt"]) for t in texts) for c in completions] == [True] * 3
    assert json.loads(printed[-1].removeprefix("RAYLINE_RESULT "))["completions"] == completions
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{summary['run_id']}/completions.json"))
    assert logged == completions
    folder = hf_dir(f"models:/{MODEL_NAME}@challenger", str(Path(settings.state_dir) / "hf-eval"))
    again = evaluate_language_model(str(settings.datasets_root), str(folder), DATASET, "latest",
                                    outcome.registered.tags["tokenizer"])
    assert again[1] == completions  # seeded: the same model gives the same text
