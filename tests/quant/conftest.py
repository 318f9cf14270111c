"""Fixtures for the quant tests: a tiny random Llama (any model will do) and the shipped organism (cohort tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantfid.models import ModelSpec, load_reference, organism_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM with the organism's widths (256/768, divisible by every group size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantfid.organism.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = train_tokenizer(["def f(x):\n    return x + 1\n" * 50, "Q: 7 * 8 = ? A: 56 reverse: stone\n" * 50], 300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


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
