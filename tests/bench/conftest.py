"""Models for the bench tests: a tiny random Llama built here (any model will do) or the shipped organism."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from quantfid.models import ModelSpec, load_model, load_tokenizer, organism_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer LlamaForCausalLM with a BPE trained on task text, saved as a transformers checkpoint."""
    from quantfid.data import tasks
    from quantfid.models.random import save_random_llama

    texts = [f"{i.prompt}{i.answer}" for i in itertools.islice(tasks.training_stream(seed=0), 3000)]
    out = tmp_path_factory.mktemp("tiny-llama")
    return save_random_llama(out, texts, vocab_size=400, hidden_size=32, intermediate_size=64)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    return load_model(spec), load_tokenizer(spec)


@pytest.fixture(scope="session")
def organism():
    assert (organism_path() / "model.safetensors").exists(), "the shipped organism is missing"
    spec = ModelSpec("organism")
    return load_model(spec), load_tokenizer(spec)
