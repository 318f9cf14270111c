"""Round-to-nearest fake quantization: the transparent baseline whose every step can be read.

Each Linear weight is split into groups of ``group_size`` consecutive input columns; every group is scaled to the
integer grid of ``bits`` bits (symmetric: [-(2^(b-1)-1), 2^(b-1)-1] around zero; asymmetric: [0, 2^b-1] with a zero
point), rounded to the nearest integer, and scaled back. Weights stay float tensors ("fake quant"), so any backend-
free forward pass measures exactly the rounding error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn


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
    """Fake-quantize every ``nn.Linear`` in place; returns the names of the modules changed.

    ``skip`` and the keys of ``overrides`` (module-name glob -> bits) are fnmatch patterns, e.g.
    ``{"*.self_attn.*": 8, "*.mlp.*": 3}``; the first matching override wins.
    """
    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(fnmatch.fnmatch(name, p) for p in skip):
            continue
        b = next((v for p, v in (overrides or {}).items() if fnmatch.fnmatch(name, p)), bits)
        module.weight.copy_(rtn_fake_quant(module.weight, b, group_size, symmetric))
        changed.append(name)
    return changed
