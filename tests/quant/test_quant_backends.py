"""Real backends on real models: every CPU-capable cohort config quantizes the organism and is verified.

The tiny random Llama covers the mechanics that need any model (skip lists, overrides, the verification's failure
paths, GPU-only errors); the organism cohort test needs the shipped weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quantfid.models import ModelSpec
from quantfid.quant import (
    QuantConfigError,
    QuantUnavailableError,
    QuantVerificationError,
    cohort,
    load_quant_config,
    quantize,
    validate_quant_config,
)
from quantfid.quant.backends.rtn import rtn_backend, rtn_storage_bits
from quantfid.quant.base import BackendResult, probe_batch, probe_logits, verify

GPU_ONLY = ["torchao_int4_wo"]


@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_configs_raise_a_clear_error_on_cpu_before_loading(name):
    # the path does not exist: the error must come before any model load
    spec = ModelSpec("/nonexistent/model", device="cpu")
    with pytest.raises(QuantUnavailableError, match=rf"quant='{name}' is GPU-only: .*model\.device=cuda"):
        quantize(spec, load_quant_config(name))


def test_rtn_skip_and_overrides_on_a_real_model(tiny_spec, tiny_reference):
    cfg = {
        "name": "mix",
        "backend": "rtn",
        "bits": 4,
        "group_size": 32,
        "overrides": {"*.self_attn.*": 8, "*.mlp.*": 3},
        "skip": ["lm_head", "model.layers.1.mlp.down_proj"],
    }
    q = quantize(tiny_spec, cfg, tiny_reference)
    v = q.verification
    assert v["skipped"] == ["lm_head", "model.layers.1.mlp.down_proj"]
    assert v["n_intended"] == v["n_quantized"] == 13
    mods, ref = dict(q.model.named_modules()), dict(tiny_reference.model.named_modules())
    assert torch.equal(mods["model.layers.1.mlp.down_proj"].weight, ref["model.layers.1.mlp.down_proj"].weight)
    assert torch.unique(mods["model.layers.0.mlp.up_proj"].weight[0, :32]).numel() <= 2**3
    assert torch.unique(mods["model.layers.0.self_attn.q_proj"].weight[0, :32]).numel() > 2**4  # 8-bit: finer grid
    # effective bits: 4 attention (256x256) at 8 bits, 5 MLP matrices at 3 bits (one skipped), fp16 scale per 32
    attn, mlp = 256 * 256, 256 * 768
    want = 8 * (rtn_storage_bits((256, 256), 8, 32, True) + 0) + 5 * rtn_storage_bits((768, 256), 3, 32, True)
    assert q.bits_per_weight == pytest.approx(want / (8 * attn + 5 * mlp))
    assert v["probe_kld_mean"] > 0 and v["logits_max_abs_diff"] > 0
    assert tiny_reference.model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32  # reference untouched
    assert not torch.equal(mods["model.layers.0.mlp.up_proj"].weight, ref["model.layers.0.mlp.up_proj"].weight)


def test_rtn_group_size_must_divide_every_layer(tiny_spec, tiny_reference):
    """A group size no layer width is divisible by fails naming the field (the backend checks before rounding)."""
    ref = copy.copy(tiny_reference)
    ref.model = copy.deepcopy(tiny_reference.model)
    ref.model.model.layers[0].mlp.down_proj = nn.Linear(640, 256, bias=False)
    cfg = validate_quant_config({"name": "g", "backend": "rtn", "bits": 4, "group_size": 256})
    with pytest.raises(QuantConfigError, match=r"quant\.group_size=256 does not divide in_features=640 of module"):
        rtn_backend(tiny_spec, cfg, ref)


def test_silent_fallback_is_an_error(tiny_reference):
    """An 'is it quantized' check that fails on an untouched model copy is reported, not recorded as a data point."""
    from torchao.utils import TorchAOBaseTensor

    cfg = validate_quant_config({"name": "fake_ao", "backend": "torchao", "method": "int8_weight_only"})
    model = copy.deepcopy(tiny_reference.model)
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    result = BackendResult(model, targets, lambda n, m: isinstance(getattr(m, "weight", None), TorchAOBaseTensor))
    ids = probe_batch(tiny_reference)
    msg = r"14 of 14 intended modules of LlamaForCausalLM were left in full precision"
    with pytest.raises(QuantVerificationError, match=msg):
        verify(cfg, result, tiny_reference, probe_logits(tiny_reference.model, ids), ids)
    claims_all = BackendResult(model, targets, lambda n, m: n in targets)
    with pytest.raises(QuantVerificationError, match=r"logits equal the reference's bit for bit"):
        verify(cfg, claims_all, tiny_reference, probe_logits(tiny_reference.model, ids), ids)


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "b", "backend": "bnb", "bits": 4, "quant_type": "fp4", "skip": ["lm_head", "*.1.self_attn.?_proj"]},
        {"name": "q", "backend": "quanto", "weights": "int8", "skip": ["lm_head", "*.mlp.*"]},
        {"name": "t", "backend": "torchao", "method": "intx_weight_only", "bits": 4, "skip": ["*.self_attn.*"]},
        {"name": "h", "backend": "hqq", "bits": 4, "skip": ["lm_head", "model.layers.0.*"]},
    ],
    ids=lambda c: c["backend"],
)
def test_library_backends_honour_skip_lists(cfg, tiny_spec, tiny_reference):
    """The skip globs become exact modules_to_not_convert: verification fails if the library quantized more/less."""
    q = quantize(tiny_spec, cfg, tiny_reference)
    v = q.verification
    assert v["n_quantized"] == v["n_intended"] > 0
    import fnmatch

    assert all(any(fnmatch.fnmatch(s, p) for p in cfg["skip"]) for s in v["skipped"])
    assert len(v["skipped"]) == sum(
        1 for n, m in tiny_reference.model.named_modules() if isinstance(m, nn.Linear) and n in v["skipped"]
    )


# --- the organism cohort ------------------------------------------------------------------------------------------

# effective bits per quantized weight each backend's storage format implies on the organism (all widths divisible
# by the group sizes): codes + scales (+ zeros) as the library stores them.
EXPECTED_BPW = {
    "rtn_w8_g128": 8 + 16 / 128,
    "rtn_w4_g32": 4 + 16 / 32,
    "rtn_w4_g32_asym": 4 + 32 / 32,
    "bnb_nf4": 4 + 32 / 64,  # absmax float32 per 64-block (+ a 16-entry code book per module)
    "hqq_w4_g64": 4 + 64 / 64,  # float32 scale and zero per 64-group (float32 compute)
    "hqq_w8_g64": 8 + 64 / 64,
    "torchao_intx4_g32": None,  # checked below: 4-bit codes + per-group scale and zero point
}


KEPT = ("quanto_int2", "bnb_nf4", "hqq_w3_g64", "rtn_mix_q4km", "torchao_int8_dyn")


@pytest.fixture(scope="module")
def cohort_quants(organism_spec, organism_reference):
    """Quantize every cohort config once (each is then checked by the tests below)."""
    keep = {"reference", *KEPT}
    out = {}
    for name in cohort("organism"):
        out[name] = quantize(organism_spec, load_quant_config(name), organism_reference)
        if name not in keep:
            out[name].model = None  # one organism copy per quant is ~18 MB: keep only those generate() uses
    return out


@pytest.mark.slow
def test_every_cohort_config_quantizes_and_is_verified(cohort_quants, organism_reference):
    ref = cohort_quants["reference"]
    assert ref.verification["n_intended"] == 0 and ref.verification["logits_max_abs_diff"] == 0.0
    ref_bytes = ref.model_bytes
    n_linear = sum(isinstance(m, nn.Linear) for m in organism_reference.model.modules())
    fingerprints = set()
    for name, q in cohort_quants.items():
        fingerprints.add(q.fingerprint)
        if name == "reference":
            continue
        v = q.verification
        if q.config["backend"] == "gguf":  # llama.cpp quantizes its output tensor too, as every shipped GGUF does
            assert v["n_intended"] == v["n_quantized"] == n_linear and v["skipped"] == [], name
        else:
            assert v["n_intended"] == v["n_quantized"] == n_linear - 1, name  # everything but lm_head
            assert v["skipped"] == ["lm_head"], name
        assert v["logits_max_abs_diff"] > 0 and v["probe_kld_mean"] > 0, name
        assert 1 < q.bits_per_weight < 10.5, (name, q.bits_per_weight)
        assert q.model_bytes < ref_bytes, name
        assert q.config["name"] == name
    assert len(fingerprints) == len(cohort_quants)  # every quant distinct
    # and distinct as data points: no two cohort quants move the probe logits identically (a duplicate would weigh
    # twice in every rank correlation; torchao_float8_wo was dropped for matching quanto_float8 exactly)
    probe = {}
    for name, q in cohort_quants.items():
        key = (q.verification["probe_kld_mean"], q.verification["logits_max_abs_diff"])
        assert key not in probe, f"{name} and {probe.get(key)} give identical logits on the probe"
        probe[key] = name
    for name, want in EXPECTED_BPW.items():
        if want is not None:
            assert cohort_quants[name].bits_per_weight == pytest.approx(want, rel=2e-3), name
    # double quant: absmax in 8 bits, a float32 absmax per 256 blocks, per module a 256-entry float32 code book for
    # the absmax, the 16-entry NF4 code book and a float32 offset; 7 matrices with 851,968 weights per block
    per_module = 256 * 32 + 16 * 32 + 32
    want_dq = 4 + 8 / 64 + 32 / (64 * 256) + 7 * per_module / 851_968
    assert cohort_quants["bnb_nf4_dq"].bits_per_weight == pytest.approx(want_dq, abs=2e-3)
    intx = cohort_quants["torchao_intx4_g32"].bits_per_weight
    assert 4 + 16 / 32 <= intx <= 4 + 64 / 32  # scale + zero point per group of 32, in 16..32-bit floats/ints


@pytest.mark.slow
def test_cohort_spans_from_near_lossless_to_degraded(cohort_quants):
    kld = {n: q.verification["probe_kld_mean"] for n, q in cohort_quants.items() if n != "reference"}
    assert min(kld.values()) < 1e-3 and kld["rtn_w8_g128"] < 1e-3
    assert max(kld.values()) > 100 * min(kld.values())
    assert kld["rtn_w2_g64"] > kld["rtn_w4_g32"] > kld["rtn_w8_g128"]


@pytest.mark.slow
@pytest.mark.parametrize("name", KEPT)
def test_kept_quants_generate_under_no_grad(name, cohort_quants, organism_reference):
    tok = organism_reference.tokenizer
    enc = tok(["def add(a, b):\n    return"], return_tensors="pt")
    with torch.no_grad():
        out = cohort_quants[name].model.generate(
            **enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
    n_in = enc["input_ids"].shape[1]
    assert n_in < out.shape[1] <= n_in + 4  # may stop early at EOS
