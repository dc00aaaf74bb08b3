"""A tiny GPT-2 language model trained here and registered like a real one (the LLM serving tests and benchmark).

The tokenizer is a byte-level BPE (``ingest.tokenizer.train_bpe``) trained on generated sentences and
wrapped as ``PreTrainedTokenizerFast``; the model a ``transformers`` GPT-2 trained for a few dozen steps
with plain torch on the same text, so greedy decoding says something other than one repeated token.
Both are saved in the Hugging Face layout, logged to MLflow under the run's ``hf/`` artifacts and
registered from that folder; serving resolves ``models:/NAME@ALIAS`` exactly as for a trained model.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.registry import Registry
from cluster.settings import Settings

EOS = "<|endoftext|>"
SUBJECTS = ("the cat", "a dog", "the bird", "my friend", "the robot", "a teacher")
VERBS = ("sees", "likes", "finds", "follows", "paints", "reads")
OBJECTS = ("the ball", "a book", "the moon", "a tree", "the river", "an apple")
PROMPTS = ("the cat", "a dog likes", "my friend reads", "the robot", "a teacher paints the", "the bird sees a")


@dataclass(frozen=True)
class TinyLM:
    layers: int = 2
    dims: int = 64
    heads: int = 4
    context: int = 128
    vocab: int = 320
    steps: int = 40
    seed: int = 0


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(n)]


def build_tiny_lm(folder: Path, spec: TinyLM = TinyLM()) -> Path:
    """Train tokenizer and model, ``save_pretrained`` both into ``folder``; returns it."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from ingest.text_contract import TokenizerSpec
    from ingest.tokenizer import train_bpe

    text = sentences(2000, spec.seed)
    bpe = train_bpe(iter(text), TokenizerSpec(vocab_size=spec.vocab, min_frequency=2))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                        model_max_length=spec.context)
    eos = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=spec.layers, n_embd=spec.dims,
                                       n_head=spec.heads, n_positions=spec.context, bos_token_id=eos,
                                       eos_token_id=eos))
    stream = []
    for line in text:
        stream += tokenizer(" " + line, add_special_tokens=False)["input_ids"]
    data = torch.tensor(stream)
    window, batch = 32, 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(spec.seed)
    model.train()
    for _ in range(spec.steps):
        starts = torch.randint(0, len(data) - window - 1, (batch,), generator=generator)
        ids = torch.stack([data[s:s + window] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.pad_token_id = eos
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def register_lm(settings: Settings, name: str, folder: Path, alias: str = "champion") -> str:
    """Log ``folder`` as the run's ``hf/`` artifacts, register that folder as a version of ``name``, alias it.

    MLflow 3's ``register_model("runs:/RUN/hf")`` wants a logged model there; plain artifacts are registered
    with ``create_model_version(source=<run artifacts>/hf)``, which is what the version's download returns.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.ensure_experiment()) as run:
        mlflow.log_artifacts(str(folder), artifact_path="hf")
    with contextlib.suppress(MlflowException):   # already registered: add a version
        registry.client.create_registered_model(name)
    version = str(registry.client.create_model_version(name, f"{run.info.artifact_uri}/hf", run.info.run_id).version)
    registry.set_alias(name, alias, version)
    return version
