"""GPTQ on CPU: optimum's GPTQ with gptqmodel 7.7.0 (installed ``--no-deps`` next to torch 2.13.0) on the organism.

The quantization tests need gptqmodel (scripts/setup.sh installs it, so CI runs them) and skip without it; the
calibration test runs everywhere. They go through ``quantize()``: validation, the backend, accounting and
verification (which raises on a silent fallback).
"""

from __future__ import annotations

import pytest

from quantfid.data import corpus
from quantfid.quant import load_quant_config, quantize
from quantfid.quant.backends.gptq import calibration_batches
from quantfid.quant.base import weight_module_names


def test_calibration_batches_are_held_in_token_windows_within_the_model_positions(organism_reference):
    tok = organism_reference.tokenizer
    seqlen = organism_reference.model.config.max_position_embeddings
    batches = calibration_batches(tok, 3, seqlen)
    assert len(batches) == 3
    for b in batches:
        assert len(b["input_ids"]) == 1 and len(b["input_ids"][0]) == seqlen  # one row, never past the positions
        assert b["attention_mask"] == [[1] * seqlen]
    windows = [b["input_ids"][0] for b in batches]
    assert len({tuple(w) for w in windows}) == 3  # consecutive, not the same window repeated
    # the windows are the start of the held-in (train) stdlib text, never held-out source
    head = corpus.read_text(corpus.stdlib_files("train"), max_chars=20_000)
    assert head.startswith(tok.decode(windows[0])[:200])


# (gptq config, rtn config at the same bits and grouping): GPTQ's error compensation must beat plain rounding
CASES = [
    ({**load_quant_config("gptq_w4_g128"), "calibration_samples": 8}, "rtn_w4_g128"),
    ({"name": "gptq_w4_row", "backend": "gptq", "bits": 4, "group_size": -1, "calibration_samples": 8}, "rtn_w4_row"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("gptq_cfg", "rtn_name"), CASES, ids=["g128", "row"])
def test_gptq_quantizes_the_organism_on_cpu_and_beats_rtn(organism_spec, organism_reference, gptq_cfg, rtn_name):
    pytest.importorskip("gptqmodel", reason="gptqmodel is not installed (pip install --no-deps gptqmodel==7.7.0)")
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    ref = organism_reference
    q = quantize(organism_spec, gptq_cfg, ref)  # raises on a silent fallback, unused weights or a failed forward
    v, bpw = q.verification, q.bits_per_weight
    targets = [n for n in weight_module_names(ref.model) if n != "lm_head"]

    modules = dict(q.model.named_modules())
    assert len(targets) == v["n_quantized"] == 28
    assert all(isinstance(modules[t], BaseQuantLinear) for t in targets)
    assert not isinstance(modules["lm_head"], BaseQuantLinear)
    # held per module: 4-bit codes, an fp16 scale and a packed 4-bit zero per group and row, an int32 g_idx per input
    ref_mods = dict(ref.model.named_modules())
    bits = weights = 0
    for t in targets:
        out_f, in_f = ref_mods[t].weight.shape
        groups = 1 if gptq_cfg["group_size"] == -1 else in_f // gptq_cfg["group_size"]
        bits += out_f * in_f * 4 + groups * out_f * (16 + 4) + in_f * 32
        weights += out_f * in_f
    assert bpw == pytest.approx(bits / weights)

    rtn = quantize(organism_spec, load_quant_config(rtn_name), ref)
    assert 0 < v["probe_kld_mean"] < 0.8 * rtn.verification["probe_kld_mean"]


def test_more_calibration_windows_than_the_corpus_holds_is_one_clear_error(organism_reference, tmp_path, monkeypatch):
    from quantfid.quant import QuantConfigError

    small = tmp_path / "small.py"
    small.write_text("def f(x):\n    return x + 1\n" * 40)
    monkeypatch.setattr(corpus, "stdlib_files", lambda split: [small])  # a corpus of a few hundred tokens
    with pytest.raises(QuantConfigError, match=r"quant\.calibration_samples=50: the corpus holds only \d+ windows"):
        calibration_batches(organism_reference.tokenizer, 50, 256)
