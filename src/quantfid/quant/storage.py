"""Effective bits per weight and model size, counted from the tensors each backend really holds.

Why count rather than trust a formula: a backend that silently kept a weight in float32, or stored 4-bit codes one per
byte, shows up here. The one rule beyond plain bytes: an integer tensor with exactly as many elements as the weight
it encodes is an *unpacked* code tensor (e.g. torchao's int4 stored in int8), counted at the config's code width;
packed codes (bitsandbytes, quanto int4/int2, hqq) are counted at their real bytes. Scales, zero points, absmax and
code books are counted at their real bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

_INT_DTYPES = {torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool}


def inner_tensors(t: object) -> Iterator[torch.Tensor]:
    """Every plain tensor that makes up ``t``: tensor subclasses are unwrapped, bnb quant states followed."""
    if t is None:
        return
    if isinstance(t, torch.Tensor) and hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from inner_tensors(getattr(t, n))
        return
    if isinstance(t, torch.Tensor):
        data = t.data if isinstance(t, nn.Parameter) else t
        if hasattr(data, "_data") and type(data).__name__ == "PackedTensor":  # quanto packed codes
            yield data._data
        else:
            yield data
        state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
        if state is not None:
            yield from _quant_state_tensors(state)
        scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params row scales
        if isinstance(scb, torch.Tensor):
            yield scb


def _quant_state_tensors(state: object) -> Iterator[torch.Tensor]:
    for key in ("absmax", "code", "offset"):
        value = getattr(state, key, None)
        if isinstance(value, torch.Tensor):
            yield value
    nested = getattr(state, "state2", None)
    if nested is not None:
        yield from _quant_state_tensors(nested)


def tensor_bits(t: object, weight_numel: int | None = None, code_bits: int | None = None) -> int:
    """Storage bits of ``t``; an unpacked integer code tensor of ``weight_numel`` elements counts ``code_bits`` each."""
    total = 0
    for inner in inner_tensors(t):
        n = inner.numel()
        if code_bits and weight_numel and inner.dtype in _INT_DTYPES and n == weight_numel:
            total += n * code_bits
        else:
            total += n * inner.element_size() * 8
    return total


def module_tensors(module: nn.Module) -> Iterator[tuple[str, object]]:
    """The module's own parameters, persistent buffers and hqq-style ``meta`` tensors (not its children's)."""
    for name, p in module.named_parameters(recurse=False):
        yield name, p
    persistent = set(getattr(module, "_buffers", {})) - set(getattr(module, "_non_persistent_buffers_set", set()))
    for name, b in module.named_buffers(recurse=False):
        if name in persistent and b is not None and b.ndim > 0:  # scalar scale placeholders (quanto) are 0-d
            yield name, b
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict):
        for key in ("scale", "zero", "zero_scale"):
            if isinstance(meta.get(key), torch.Tensor):
                yield f"meta.{key}", meta[key]
        for key in ("meta_scale", "meta_zero"):
            sub = meta.get(key)
            if isinstance(sub, dict):
                for k2, v2 in sub.items():
                    if isinstance(v2, torch.Tensor):
                        yield f"meta.{key}.{k2}", v2
    state = getattr(module, "state", None)  # bitsandbytes Linear8bitLt moves the row scales here on first forward
    scb = getattr(state, "SCB", None)
    weight = getattr(module, "weight", None)
    if isinstance(scb, torch.Tensor) and scb is not getattr(weight, "SCB", None):
        yield "state.SCB", scb
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and "bias" not in dict(module.named_parameters(recurse=False)):
        yield "bias", bias


def model_bits(model: nn.Module, code_bits: dict[str, tuple[int, int]] | None = None) -> int:
    """Storage bits of the whole model; ``code_bits`` maps a module name to (weight numel, code bits)."""
    seen: set[int] = set()
    total = 0
    for mname, module in model.named_modules():
        numel, bits = (code_bits or {}).get(mname, (None, None))
        for _, t in module_tensors(module):
            if id(t) in seen:  # tied weights count once
                continue
            seen.add(id(t))
            total += tensor_bits(t, numel, bits)
    return total
