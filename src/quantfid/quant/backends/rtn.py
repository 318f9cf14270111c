"""Round-to-nearest fake quantization: the transparent baseline whose every step can be read.

Each weight matrix (``nn.Linear``, and transformers' ``Conv1D`` through its transpose) is split into groups of
``group_size`` consecutive input columns; every group is scaled to the integer grid of ``bits`` bits (symmetric:
[-(2^(b-1)-1), 2^(b-1)-1] around zero; asymmetric: [0, 2^b-1] with a zero point), rounded to the nearest integer,
and scaled back. Weights stay float tensors ("fake quant"), so any backend-free forward pass measures exactly the
rounding error.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult, in_features, is_weight_module, target_modules, weight_matrix
from quantfid.quant.config import QuantConfig
from quantfid.quant.registry import register
from quantfid.quant.schema import SKIP, BackendSchema, Option, QuantConfigError, check_bits_glob_map


def rtn_fake_quant(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = True) -> torch.Tensor:
    """Round ``weight`` (out x in) group-wise to ``bits`` bits and return the dequantized tensor."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: RTN supports 2..8")
    out_features, in_features = weight.shape
    g = in_features if group_size in (0, -1) else group_size
    if in_features % g:
        raise ValueError(f"group_size={group_size} does not divide the input dimension {in_features}")
    w = weight.detach().to(torch.float32).reshape(out_features, in_features // g, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round(w / scale), -qmax, qmax)
        deq = q * scale
    else:
        qmax = 2**bits - 1
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-12) / qmax
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
        deq = (q - zero) * scale
    return deq.reshape(out_features, in_features).to(weight.dtype)


@torch.no_grad()
def rtn_quantize_(
    model: nn.Module,
    bits: int,
    group_size: int = 64,
    symmetric: bool = True,
    skip: Sequence[str] = ("lm_head",),
    overrides: dict[str, int] | None = None,
) -> list[str]:
    """Fake-quantize every weight module (``nn.Linear``, ``Conv1D``) in place; returns the names of the modules changed.

    ``skip`` and the keys of ``overrides`` (module-name glob -> bits) are fnmatch patterns, e.g.
    ``{"*.self_attn.*": 8, "*.mlp.*": 3}``; the first matching override wins.
    """
    changed = []
    for name, module in model.named_modules():
        if not is_weight_module(module) or any(fnmatch.fnmatch(name, p) for p in skip):
            continue
        b = next((v for p, v in (overrides or {}).items() if fnmatch.fnmatch(name, p)), bits)
        w = weight_matrix(module)  # (out, in): a transposed view for Conv1D, written through to its storage
        w.copy_(rtn_fake_quant(w, b, group_size, symmetric))
        changed.append(name)
    return changed


# --- the RTN backend: the functions above behind the registry's interface -------------------------------------------


def rtn_storage_bits(weight_shape: tuple[int, int], bits: int, group_size: int, symmetric: bool) -> int:
    """Bits of the packed format RTN stands for: ``bits``-bit codes plus an fp16 scale per group (and an fp16 minimum
    when asymmetric), i.e. GGUF Q4_0 / Q4_1 at group 32."""
    out_features, in_features = weight_shape
    g = in_features if group_size in (0, -1) else group_size
    groups = out_features * (in_features // g)
    return out_features * in_features * bits + groups * (16 if symmetric else 32)


SCHEMA = BackendSchema(
    "rtn",
    (
        Option("bits", int, choices=(2, 3, 4, 5, 6, 7, 8), doc="integer grid width"),
        Option("group_size", int, default=64, choices=(-1, 16, 32, 64, 128, 256), doc="-1: one group per row"),
        Option("symmetric", bool, default=True, doc="symmetric grid around 0, or asymmetric with a zero point"),
        Option("overrides", dict, default=None, check=check_bits_glob_map, doc="module glob -> bits, first wins"),
        SKIP,
    ),
    doc="round-to-nearest fake quant written here: every step readable; mixed precision by overrides",
    module_classes=("Linear", "Conv1D"),
)


@register(SCHEMA)
def rtn_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    opts = cfg.options
    model = copy.deepcopy(reference.model)
    targets = target_modules(model, opts["skip"])
    modules = dict(model.named_modules())
    overrides = opts["overrides"] or {}
    g = opts["group_size"]
    for t in targets:
        width = in_features(modules[t])
        if g not in (0, -1) and width % g:
            raise QuantConfigError(
                f"quant.group_size={g} does not divide in_features={width} of module {t!r}; allowed here: "
                f"divisors of every quantized layer's input width, or -1 (one group per row)"
            )
    changed = rtn_quantize_(model, opts["bits"], g, opts["symmetric"], skip=tuple(opts["skip"]), overrides=overrides)
    bits_of = {t: next((v for p, v in overrides.items() if fnmatch.fnmatch(t, p)), opts["bits"]) for t in changed}
    ref_modules = dict(reference.model.named_modules())

    def is_quantized(name: str, module: nn.Module) -> bool:
        if name not in bits_of or not is_weight_module(module):
            return False
        w = weight_matrix(module)
        if torch.equal(w, weight_matrix(ref_modules[name])):
            return False
        # every group holds at most 2^bits distinct values: the weight really sits on the grid
        group = w[0, : (w.shape[1] if g in (0, -1) else g)]
        return torch.unique(group).numel() <= 2 ** bits_of[name]

    def storage_bits(name: str, module: nn.Module) -> int:
        return rtn_storage_bits(tuple(weight_matrix(module).shape), bits_of[name], g, opts["symmetric"])

    return BackendResult(model=model, targets=targets, is_quantized=is_quantized, storage_bits=storage_bits)
