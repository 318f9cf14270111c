"""Fixtures for the quant tests: a tiny random Llama (any model will do) and the shipped organism (cohort tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantfid.models import ModelSpec, load_reference, organism_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM with the organism's widths (256/768, divisible by every group size)."""
    from quantfid.models.random import save_random_llama

    texts = ["def f(x):\n    return x + 1\n" * 50, "Q: 7 * 8 = ? A: 56 reverse: stone\n" * 50]
    return save_random_llama(
        tmp_path_factory.mktemp("tiny_llama"),
        texts,
        vocab_size=300,
        hidden_size=256,
        intermediate_size=768,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir: Path) -> ModelSpec:
    return ModelSpec(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_reference(tiny_spec: ModelSpec):
    return load_reference(tiny_spec)


@pytest.fixture(scope="session")
def organism_spec() -> ModelSpec:
    assert (organism_path() / "config.json").is_file(), "the shipped organism is missing"
    return ModelSpec("organism")


@pytest.fixture(scope="session")
def organism_reference(organism_spec: ModelSpec):
    return load_reference(organism_spec)
