"""GPT jobs on token datasets: a tokenized text version's shards, packed into ``seq_len + 1`` rows,
feed DDP (with gradient compression) and DeepSpeed ZeRO-2 through the same resumable batches
as synthetic tokens; resume after a killed worker is bit-identical; bad data fields fail in one line.

Real parts: a text dataset generated here (seeded sentences, no downloads), ingested and
tokenized by the real pipeline, real Ray Train (2 CPU workers, gloo), real MLflow. The failure
is the RAYLINE_TEST_FAIL_AT_STEP hook (rank 1 hard-exits before the step, once per run).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from ingest.pipeline import run_ingest
from ingest.tokens import build_token_dataset, open_token_split
from train import fingerprint
from train.config import TrainConfigError, parse_config
from train.data import packed_sequences
from train.faults import FAIL_AT_STEP_ENV, FAIL_RANK_ENV
from train.strategy import MODEL_FILE
from train.trainer import prepare, run_dir, train

DATASET = "stories"
SEQ = 32
VOCAB, OTHER_VOCAB = 300, 320  # the tokenizer the runs read (CURRENT), and a second one of the same version
MAX_STEPS = 12
KILL_AT = 9  # after the checkpoint at step 8
SUBJECTS = ("the cat", "a dog", "the old fox", "my neighbour", "a small bird", "the river", "our teacher")
VERBS = ("sees", "follows", "likes", "carries", "finds", "watches", "remembers", "paints")
OBJECTS = ("the red ball", "a quiet house", "the long road", "an apple", "the blue sky", "a wooden box")


def make_stories(folder: Path, root: str, documents: int = 240, dataset: str = DATASET, tokenize: bool = True) -> dict:
    """A small text dataset of seeded sentences (learnable, no downloads), ingested and tokenized twice:
    first with ``OTHER_VOCAB``, then with ``VOCAB``, which stays CURRENT. Returns both tokenizer ids."""
    rng = random.Random(0)
    lines = (" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                      for _ in range(rng.randint(4, 9))) for _ in range(documents))
    source = folder / f"{dataset}.ndjson"
    source.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    contract = {"kind": "text", "text": "text", "split": {"validation_fraction": 0.2, "seed": 0},
                "tokenizer": {"vocab_size": VOCAB, "shard_tokens": 4096}}  # several shards per split
    run_ingest(str(source), contract, dataset, root)
    if not tokenize:
        return {}
    other = build_token_dataset(root, dataset, vocab_size=OTHER_VOCAB)["tokenizer"]["id"]
    return {"other": other, "current": build_token_dataset(root, dataset)["tokenizer"]["id"]}


def token_job(run_name: str, **changes):
    """A 1-layer GPT on the stories' token shards: 12 steps, checkpoints every 4, fp16 gradient compression."""
    return parse_config({
        "run_name": run_name, "seed": 3,
        "model": {"name": "gpt", "params": {"n_layer": 1, "n_embd": 32, "n_head": 2, "dropout": 0.1, "seq_len": SEQ}},
        "data": {"dataset": DATASET, "version": "latest"},
        "batch_size": 8, "epochs": 1, "max_steps": MAX_STEPS, "optimizer": {"lr": 1e-2},
        "schedule": {"name": "cosine", "warmup_steps": 2}, "compression": {"kind": "fp16"},
        "checkpoint": {"every_steps": 4, "keep": 2}, "failure": {"max_failures": 1}, "log_every": 1,
        "eval_batches": 2, **changes,
    })


def _weights(outcome) -> dict[str, torch.Tensor]:
    return torch.load(Path(outcome.checkpoint) / MODEL_FILE)


def _losses(settings, run_id: str, key: str) -> list[float]:
    history = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.fixture(scope="module")
def stories(settings, tmp_path_factory) -> dict:
    return make_stories(tmp_path_factory.mktemp("stories"), str(settings.datasets_root))


@pytest.fixture(scope="module")
def reference(ray_cluster, settings, stories):
    """The uninterrupted run every other result is compared with."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(FAIL_AT_STEP_ENV, raising=False)
        return train(token_job("tokens-reference"), settings, register=False)


def test_packed_sequences_concatenate_to_the_split_token_stream(tmp_path: Path) -> None:
    make_stories(tmp_path, str(tmp_path / "datasets"), tokenize=False)
    build_token_dataset(str(tmp_path / "datasets"), DATASET)
    for split in ("train", "validation"):
        stream = open_token_split(str(tmp_path / "datasets"), DATASET, "latest", split)
        eos = stream.manifest["eos_id"]
        documents = np.concatenate([np.append(doc, eos) for doc in stream.documents()])
        assert len(stream.shards) > 1  # rows that cross shard files are packed too
        for seq_len in (SEQ, 7):
            packed = packed_sequences(stream, seq_len)
            assert packed.shape[1] == seq_len + 1
            np.testing.assert_array_equal(packed.reshape(-1), documents[:packed.size])
            assert 0 <= len(documents) - packed.size < seq_len + 1  # only a tail shorter than a row is left out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_with_compression_trains_on_token_shards_with_their_lineage(reference, stories, settings) -> None:
    assert reference.metrics["step"] == MAX_STEPS
    assert reference.metrics["compression_ratio"] == pytest.approx(2.0, rel=0.05)  # fp16 halves the bytes sent
    losses = _losses(settings, reference.run_id, "loss")
    assert losses[-1] < losses[0] - 1.0, losses
    tags = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(reference.run_id).data.tags
    manifest = open_token_split(str(settings.datasets_root), DATASET, "latest", "train").manifest
    assert tags["rayline.dataset"] == DATASET and tags["rayline.tokenizer"] == stories["current"]
    assert tags["rayline.train_tokens"] == str(manifest["splits"]["train"]["tokens"])
    assert tags["rayline.dataset_version"] == manifest["version"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_killed_on_token_shards_resumes_to_identical_weights(reference, settings, monkeypatch) -> None:
    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(KILL_AT))
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    outcome = train(token_job("tokens-killed"), settings, register=False)
    assert (run_dir(token_job("tokens-killed"), settings) / f".injected_failure_step{KILL_AT}").exists()
    assert outcome.metrics["steps_this_attempt"] < MAX_STEPS  # the second attempt started from a checkpoint
    before, after = _weights(reference), _weights(outcome)
    assert before.keys() == after.keys()
    assert not [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resubmitting_a_run_with_another_tokenizer_is_refused(reference, stories, settings) -> None:
    with pytest.raises(fingerprint.RunChangedError) as refused:
        train(token_job("tokens-reference", data={"dataset": DATASET, "version": "latest",
                                                  "tokenizer": stories["other"]}), settings, register=False)
    message = str(refused.value)
    assert f"data.tokenizer: \"{stories['current']}\" → \"{stories['other']}\"" in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_zero2_trains_on_token_shards_to_a_lower_loss(ray_cluster, stories, settings) -> None:
    config = token_job("tokens-zero2", strategy="deepspeed", deepspeed={"stage": 2}, compression={"kind": "none"})
    outcome = train(config, settings, register=False)
    losses = _losses(settings, outcome.run_id, "loss")
    assert outcome.metrics["step"] == MAX_STEPS and losses[-1] < losses[0] - 1.0, losses
    assert outcome.metrics["val_loss"] < math.log(VOCAB) - 1.0


@pytest.mark.timeout(300)
def test_bad_token_data_fields_fail_in_one_line_before_any_worker_starts(stories, settings, tmp_path: Path) -> None:
    make_stories(tmp_path, str(settings.datasets_root), documents=40, dataset="raw-stories", tokenize=False)
    longest = len(open_token_split(str(settings.datasets_root), DATASET, "latest", "validation"))  # no whole row
    cases = {
        "invalid 'data.version': dataset 'nope' version 'latest' not found":
            token_job("bad", data={"dataset": "nope", "version": "latest"}),
        "is not tokenized yet: run `rayline tokenize --dataset raw-stories --version":
            token_job("bad", data={"dataset": "raw-stories", "version": "latest"}),
        "invalid 'data.tokenizer':": token_job("bad", data={"dataset": DATASET, "version": "latest",
                                                            "tokenizer": "tok-000000000000"}),
        f"invalid 'model.params.vocab_size': 512, but the data has vocab_size {VOCAB}":
            token_job("bad", model={"name": "gpt", "params": {"n_layer": 1, "vocab_size": 512}}),
        "invalid 'model.params.seq_len': the validation split":
            token_job("bad", model={"name": "gpt", "params": {"n_layer": 1, "seq_len": longest}}),
    }
    for expected, config in cases.items():
        with pytest.raises(TrainConfigError) as failed:
            prepare(config, settings)
        assert expected in str(failed.value) and "\n" not in str(failed.value), str(failed.value)
    with pytest.raises(TrainConfigError, match=r"invalid 'data\.synthetic_tokens'"):
        token_job("bad", data={"dataset": DATASET, "version": "latest", "synthetic_tokens": {}})
