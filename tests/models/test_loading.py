"""Model loading through from_pretrained and fingerprints (the model config group: tests/sweep/test_sweep_config.py)."""

from pathlib import Path

import pytest
import torch

from quantfid.data.tokenizer import train_tokenizer
from quantfid.models import (
    ModelLoadError,
    ModelSpec,
    load_reference,
    model_fingerprint,
    organism_path,
    tokenizer_fingerprint,
)
from quantfid.models.random import save_random_llama


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small random Llama + BPE saved like any hub checkpoint."""
    texts = ["def f(x):\n    return x + 1\n" * 50, "hello world 123"]
    path = tmp_path_factory.mktemp("tiny")
    return save_random_llama(path, texts, vocab_size=300, max_position_embeddings=64, num_hidden_layers=1)


def test_load_reference_from_local_path_and_fingerprint_is_stable(tiny_checkpoint):
    a = load_reference(ModelSpec(str(tiny_checkpoint)))
    b = load_reference(ModelSpec(str(tiny_checkpoint)))
    assert a.fingerprint == b.fingerprint
    assert not a.model.training
    assert a.model.dtype == torch.float32
    ids = a.tokenizer("return x", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == a.tokenizer.eos_token_id  # BOS post-processor
    assert torch.isfinite(a.model(input_ids=ids).logits).all()


def test_fingerprint_changes_with_weights_dtype_and_tokenizer(tiny_checkpoint):
    ref = load_reference(ModelSpec(str(tiny_checkpoint)))
    base = ref.fingerprint
    assert model_fingerprint(ref.model, ref.tokenizer, "bfloat16") != base
    with torch.no_grad():
        ref.model.lm_head.weight[0, 0] += 1e-3
    assert model_fingerprint(ref.model, ref.tokenizer, "float32") != base
    other = train_tokenizer(["something else entirely"], vocab_size=280)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(ref.tokenizer)


def test_bfloat16_load(tiny_checkpoint):
    ref = load_reference(ModelSpec(str(tiny_checkpoint), dtype="bfloat16"))
    assert ref.model.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (ModelSpec("/nonexistent/model/dir"), "model.name_or_path"),
        (ModelSpec("organism", dtype="float8"), "model.dtype"),
        (ModelSpec("organism", device="tpu"), "model.device"),
        (ModelSpec("organism", device="cuda"), "model.device"),
    ],
)
def test_bad_model_spec_gives_one_clear_error(spec, match):
    if spec.device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ModelLoadError, match=match):
        load_reference(spec)


def test_shipped_organism_loads_through_from_pretrained():
    ref = load_reference(ModelSpec("organism"))
    assert type(ref.model).__name__ == "LlamaForCausalLM"
    assert ref.model.config.hidden_size % 128 == 0 and ref.model.config.intermediate_size % 128 == 0
    assert (organism_path() / "model.safetensors").stat().st_size <= 25 * 1024**2
    assert ref.fingerprint == load_reference(ModelSpec(str(organism_path()))).fingerprint
