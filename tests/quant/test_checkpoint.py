"""Existing quantized checkpoints as quants (backend ``checkpoint``): round-trips on checkpoints serialized here (the
loaded checkpoint's logits equal the in-memory quant's), and refusals when tokenizer or architecture differ."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from quantfid.data.tokenizer import train_tokenizer
from quantfid.models import ModelSpec, load_reference
from quantfid.models.random import save_random_model
from quantfid.quant import QuantUnavailableError, quant_fingerprint, quantize
from quantfid.quant.base import probe_batch, probe_logits

TEXTS = ["def f(x):\n    return x + 1\n" * 40, "Q: 7 * 8 = ? A: 56 reverse: stone -> enots\n" * 40]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return load_reference(ModelSpec(str(save_random_model(tmp_path_factory.mktemp("llama"), "llama", TEXTS, 300))))


def roundtrip(reference, cfg: dict, out: Path):
    """Quantize in memory, save_pretrained (model + the reference's tokenizer), load as a ``checkpoint`` quant."""
    q = quantize(reference.spec, cfg, reference)
    q.model.save_pretrained(out)
    reference.tokenizer.save_pretrained(out)
    loaded = quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": str(out)}, reference)
    ids = probe_batch(reference)
    return q, loaded, probe_logits(q.model, ids), probe_logits(loaded.model, ids)


def test_bitsandbytes_4bit_checkpoint_roundtrip(reference, tmp_path):
    pytest.importorskip("bitsandbytes")
    q, loaded, a, b = roundtrip(reference, {"name": "b4", "backend": "bnb", "bits": 4}, tmp_path / "bnb4")
    assert torch.equal(a, b)  # the checkpoint is the quant, bit for bit
    assert loaded.verification["module_types"] == {"Linear4bit/Params4bit": 14}  # 2 layers x 7, lm_head kept
    # bitsandbytes 0.50 repacks 4-bit weights for its CPU kernel on the first forward where the CPU has AVX512-BF16
    # (the quant's verification ran one), and save_pretrained then writes that layout (absmax in bfloat16): the
    # checkpoint holds other scale tensors than the quant as made, so its bits are equal only for the portable layout
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bnb4" / "model.safetensors"), framework="pt") as st:
        absmax = [st.get_slice(k).get_dtype() for k in st.keys() if k.endswith(".weight.absmax")]  # noqa: SIM118
    assert absmax and len(set(absmax)) == 1
    if absmax[0] == "F32":
        assert loaded.bits_per_weight == pytest.approx(q.bits_per_weight)
    else:  # the CPU layout: 4-bit codes, bfloat16 block scales: fewer scale bits than the float32 absmax as made
        assert absmax[0] == "BF16" and 4 < loaded.bits_per_weight < q.bits_per_weight
    assert loaded.bits_per_weight < 5
    assert loaded.verification["probe_kld_mean"] > 0 and not loaded.is_reference
    # the checkpoint's files are its identity: another checkpoint at the same path is another quant
    fp = quant_fingerprint({"name": "ck", "backend": "checkpoint", "path": str(tmp_path / "bnb4")}, "r")
    cfg = json.loads((tmp_path / "bnb4" / "config.json").read_text())
    (tmp_path / "bnb4" / "config.json").write_text(json.dumps({**cfg, "note": "re-saved"}))
    assert quant_fingerprint({"name": "ck", "backend": "checkpoint", "path": str(tmp_path / "bnb4")}, "r") != fp


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="needs gptqmodel (scripts/setup.sh)")
def test_gptq_checkpoint_saved_by_gptqmodel_roundtrip(reference, tmp_path):
    cfg = {"name": "g4", "backend": "gptq", "bits": 4, "group_size": 128, "calibration_samples": 4}
    q, loaded, a, b = roundtrip(reference, cfg, tmp_path / "gptq4")
    assert torch.equal(a, b)
    assert loaded.verification["n_quantized"] == 14 and loaded.bits_per_weight == pytest.approx(q.bits_per_weight)


def test_refusals_name_what_differs(reference, tmp_path):
    pytest.importorskip("bitsandbytes")
    ck = tmp_path / "bnb"
    q = quantize(reference.spec, {"name": "b4", "backend": "bnb", "bits": 4}, reference)
    q.model.save_pretrained(ck)
    # no tokenizer files: the reference's is used, fine
    assert quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": str(ck)}, reference).model

    other_tok = train_tokenizer(["completely different text " * 50, "zzz yyy xxx " * 50], vocab_size=300)
    other_tok.save_pretrained(ck)
    with pytest.raises(QuantUnavailableError, match=r"the tokenizer of checkpoint .* differs from the reference's"):
        quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": str(ck)}, reference)

    gpt2 = save_random_model(tmp_path / "gpt2", "gpt2", TEXTS, 300)
    msg = r"is not a quant of the reference: architectures \['GPT2LMHeadModel'\] vs the reference's \['LlamaForCausalLM"
    with pytest.raises(QuantUnavailableError, match=msg):
        quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": str(gpt2)}, reference)

    wider = save_random_model(tmp_path / "wide", "llama", TEXTS, 300, hidden_size=256)
    msg = r"differing config fields \(reference, checkpoint\): \{'hidden_size': \(128, 256\)\}"
    with pytest.raises(QuantUnavailableError, match=msg):
        quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": str(wider)}, reference)

    with pytest.raises(QuantUnavailableError, match=r"has no quantization_config in its config.json"):
        quantize(
            reference.spec, {"name": "ck", "backend": "checkpoint", "path": reference.spec.name_or_path}, reference
        )
    with pytest.raises(QuantUnavailableError, match=r"quant.path='/nope/ck' .*no checkpoint config could be read"):
        quantize(reference.spec, {"name": "ck", "backend": "checkpoint", "path": "/nope/ck"}, reference)


def test_the_checkpoint_files_are_in_the_run_identity(tmp_path):
    """The sweep puts the checkpoint's file hash into the run's params and identity (quant.source_sha256)."""
    from quantfid.api.schema import PARAM_QUANT_SOURCE_SHA256
    from quantfid.sweep.stages import quant_source_stage

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text('{"a": 1}')
    cfg = {"backend": "checkpoint", "path": str(ck)}
    first = quant_source_stage(cfg, "checkpoint")
    assert first and first == quant_source_stage(cfg, "checkpoint")
    (ck / "config.json").write_text('{"a": 2}')  # re-saved at the same path: another quant, another identity
    assert quant_source_stage(cfg, "checkpoint") != first
    assert quant_source_stage({"backend": "rtn", "bits": 4}, "rtn_w4") is None  # made here: its config says it all
    assert quant_source_stage({"backend": "checkpoint", "path": "???"}, "checkpoint") is None  # invalid: fails later
    assert PARAM_QUANT_SOURCE_SHA256 == "quant.source_sha256"
