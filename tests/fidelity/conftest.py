"""Fixtures of the fidelity tests: a tiny random Llama (saved and loaded like any checkpoint) and its BPE tokenizer.

The tests only need *some* causal LM; they build one in a tmp dir rather than depend on the shipped organism.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from quantfid.data import corpus
from quantfid.data.tokenizer import train_tokenizer
from quantfid.fidelity import FidelitySettings
from quantfid.models.loading import ModelSpec, Reference, load_reference
from quantfid.models.random import save_random_llama


def make_tokenizer(n_files: int = 25, vocab_size: int = 384):
    text = corpus.read_text(corpus.stdlib_files("train")[:n_files])
    return train_tokenizer([text], vocab_size=vocab_size)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A random LlamaForCausalLM + tokenizer saved as a transformers checkpoint (peaked logits, like a real LM)."""
    text = corpus.read_text(corpus.stdlib_files("train")[:25])
    return save_random_llama(
        tmp_path_factory.mktemp("tiny-llama"),
        [text],
        vocab_size=384,
        num_attention_heads=4,
        max_position_embeddings=128,
        initializer_range=0.3,
    )


@pytest.fixture(scope="session")
def reference(tiny_dir) -> Reference:
    return load_reference(ModelSpec(str(tiny_dir)))


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """A 'quant': the same model with relative Gaussian noise on every Linear weight."""
    q = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in q.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                w.add_(torch.randn(w.shape, generator=g) * w.std() * scale)
    return q


@pytest.fixture(name="perturbed")
def perturbed_fixture():
    return perturbed


@pytest.fixture(name="make_tokenizer")
def make_tokenizer_fixture():
    return make_tokenizer


@pytest.fixture
def settings() -> FidelitySettings:
    return FidelitySettings(corpus="code", context=64, topk=16, max_tokens=1024, batch_size=4)
