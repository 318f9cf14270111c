"""Models for the bench tests: a tiny random Llama built here (any model will do) or the shipped organism."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from quantfid.models import ModelSpec, load_model, load_tokenizer, organism_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer LlamaForCausalLM with a BPE trained on task text, saved as a transformers checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantfid.organism import tasks
    from quantfid.organism.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    texts = [f"{i.prompt}{i.answer}" for i in itertools.islice(tasks.training_stream(seed=0), 3000)]
    tok = train_tokenizer(texts, vocab_size=400)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir))
    return load_model(spec), load_tokenizer(spec)


@pytest.fixture(scope="session")
def organism():
    assert (organism_path() / "model.safetensors").exists(), "the shipped organism is missing"
    spec = ModelSpec("organism")
    return load_model(spec), load_tokenizer(spec)
