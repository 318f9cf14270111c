"""Every weight module a backend quantizes is a target, whatever its class (transformers' Conv1D included), and a
quant that changed nothing, or kept the reference's bits per weight, is an error naming the architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quantfid.models import ModelSpec, load_reference
from quantfid.models.random import save_random_model
from quantfid.quant import QuantUnavailableError, QuantVerificationError, quantize, registry
from quantfid.quant.backends.rtn import rtn_fake_quant
from quantfid.quant.base import BackendResult, check_targets, module_classes, weight_matrix, weight_module_names
from quantfid.quant.schema import SKIP, BackendSchema, Option

TEXTS = ["def f(x):\n    return x + 1\n" * 40, "Q: 7 * 8 = ? A: 56 reverse: stone -> enots\n" * 40]


@pytest.fixture(scope="module")
def gpt2_reference(tmp_path_factory):
    out = save_random_model(tmp_path_factory.mktemp("gpt2"), "gpt2", TEXTS, vocab_size=300)
    return load_reference(ModelSpec(str(out)))


def test_conv1d_modules_are_targets(gpt2_reference):
    model = gpt2_reference.model
    names = weight_module_names(model)
    classes = module_classes(model)
    assert classes == {"Conv1D": 8, "Linear": 1}  # 2 blocks x (c_attn, c_proj, c_fc, mlp.c_proj) + lm_head
    assert "transformer.h.0.attn.c_attn" in names and "lm_head" in names
    conv = model.get_submodule("transformer.h.0.mlp.c_fc")
    assert tuple(conv.weight.shape) == (128, 256)  # stored (in, out)
    assert tuple(weight_matrix(conv).shape) == (256, 128)  # seen as (out, in), like nn.Linear


def test_rtn_quantizes_conv1d_along_its_input_axis(gpt2_reference):
    q = quantize(gpt2_reference.spec, {"name": "r", "backend": "rtn", "bits": 4, "group_size": 128}, gpt2_reference)
    assert q.verification["n_quantized"] == 8 and q.verification["module_types"] == {"Conv1D/Parameter": 8}
    assert q.verification["probe_kld_mean"] > 0
    # 4-bit codes + one fp16 scale per group of 128 input columns, over every Conv1D weight
    assert q.bits_per_weight == pytest.approx(4 + 16 / 128)
    name = "transformer.h.1.attn.c_attn"
    ref_w = gpt2_reference.model.get_submodule(name).weight  # (in=128, out=384)
    expected = rtn_fake_quant(ref_w.t().contiguous(), 4, 128).t()  # groups along the input axis, stored transposed
    assert torch.equal(q.model.get_submodule(name).weight, expected)
    # independent check that the groups run along the input axis: each output row of a group holds <= 16 levels
    w = q.model.get_submodule(name).weight.t()
    assert all(torch.unique(w[r]).numel() <= 15 for r in range(0, 384, 37))


def test_hqq_quantizes_conv1d_as_the_linear_it_stands_for(gpt2_reference):
    pytest.importorskip("hqq")
    q = quantize(gpt2_reference.spec, {"name": "h", "backend": "hqq", "bits": 4, "group_size": 64}, gpt2_reference)
    assert q.verification["n_quantized"] == 8 and set(q.verification["module_types"]) == {"HQQLinear/Parameter"}
    assert q.bits_per_weight == pytest.approx(4 + 2 * 32 / 64) and 0 < q.verification["probe_kld_mean"] < 0.1


@pytest.mark.parametrize(
    "backend, options", [("quanto", {"weights": "int8"}), ("torchao", {"method": "int8_weight_only"})]
)
def test_backends_that_replace_only_linear_refuse_gpt2(gpt2_reference, backend, options):
    cfg = {"name": f"{backend}_x", "backend": backend, **options}
    msg = rf"backend '{backend}' cannot quantize GPT2LMHeadModel: it replaces only \['Linear'\] modules .*Conv1D"
    with pytest.raises(QuantUnavailableError, match=msg):
        check_targets(cfg, gpt2_reference.model)
    with pytest.raises(QuantUnavailableError, match=msg):  # quantize refuses before building anything
        quantize(gpt2_reference.spec, cfg, gpt2_reference)


def test_check_targets_works_on_a_meta_model_without_weights(gpt2_reference):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(gpt2_reference.model.config)
    assert len(check_targets({"name": "r", "backend": "rtn", "bits": 4}, meta)) == 8
    with pytest.raises(QuantUnavailableError, match="cannot quantize GPT2LMHeadModel"):
        check_targets({"name": "q", "backend": "quanto", "weights": "int8"}, meta)


def test_a_config_that_quantizes_nothing_is_refused(gpt2_reference):
    with pytest.raises(
        QuantUnavailableError, match=r"would quantize nothing in GPT2LMHeadModel: its weight modules are"
    ):
        quantize(gpt2_reference.spec, {"name": "r", "backend": "rtn", "bits": 4, "skip": ["*"]}, gpt2_reference)


@pytest.fixture
def float_backend():
    """A backend that perturbs its targets but keeps them float32: no bits saved, so no quant."""
    schema = BackendSchema("floaty", (Option("scale", float, default=1e-3), SKIP), module_classes=("Linear", "Conv1D"))

    def build(spec, cfg, reference) -> BackendResult:
        model = copy.deepcopy(reference.model)
        targets = check_targets(cfg, model)
        with torch.no_grad():
            for t in targets:
                weight_matrix(model.get_submodule(t)).mul_(1 + cfg.options["scale"])
        return BackendResult(model, targets, lambda name, m: True)

    registry.register(schema)(build)
    yield
    registry._REGISTRY.pop("floaty", None)


def test_a_quant_that_keeps_the_reference_bits_is_an_error(gpt2_reference, float_backend):
    msg = r"32\.000 effective bits per weight, no fewer than the reference's 32, on GPT2LMHeadModel \(weight modules"
    with pytest.raises(QuantVerificationError, match=msg + r" \{'Conv1D': 8, 'Linear': 1\}\)"):
        quantize(gpt2_reference.spec, {"name": "f", "backend": "floaty"}, gpt2_reference)


def test_unchanged_targets_name_the_architecture(gpt2_reference):
    """A backend that says it quantized Conv1D modules but left them as they were: a silent fallback."""
    schema = BackendSchema("noop", (SKIP,), module_classes=("Linear", "Conv1D"))

    def build(spec, cfg, reference) -> BackendResult:
        model = copy.deepcopy(reference.model)
        targets = check_targets(cfg, model)
        # it even claims 4 bits per weight: the verification must still see the weights unchanged
        return BackendResult(
            model, targets, lambda n, m: isinstance(m, nn.Linear), storage_bits=lambda n, m: 4 * m.weight.numel()
        )

    registry.register(schema)(build)
    try:
        with pytest.raises(
            QuantVerificationError, match=r"8 of 8 intended modules of GPT2LMHeadModel were left in full"
        ):
            quantize(gpt2_reference.spec, {"name": "n", "backend": "noop"}, gpt2_reference)
    finally:
        registry._REGISTRY.pop("noop", None)
