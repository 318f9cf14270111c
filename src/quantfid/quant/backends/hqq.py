"""HQQ (half-quadratic quantization), the ``hqq`` library driven directly.

transformers 5.x refuses ``HqqConfig`` ("not available yet"), so each target ``nn.Linear`` of a copy of the reference
is replaced by an ``HQQLinear`` here; a transformers ``Conv1D`` (GPT-2) is first turned into the ``nn.Linear`` it
stands for (its weight transposed), which computes the same function. float32 compute is fast on CPU; bfloat16
compute takes 45-95 s to quantize even the organism (no native bf16 on this CPU).
"""

from __future__ import annotations

import copy

from torch import nn
from tqdm.auto import tqdm

from quantfid.models.loading import DTYPES, ModelSpec, Reference
from quantfid.quant.base import BackendResult, is_conv1d, target_modules, weight_matrix
from quantfid.quant.config import QuantConfig
from quantfid.quant.registry import register
from quantfid.quant.schema import FLOAT_DTYPES, SKIP, BackendSchema, Option

SCHEMA = BackendSchema(
    "hqq",
    (
        Option("bits", int, choices=(1, 2, 3, 4, 8)),
        Option("group_size", int, default=64, choices=(32, 64, 128, 256)),
        Option("compute_dtype", str, default="float32", choices=FLOAT_DTYPES),
        Option("axis", int, default=1, choices=(0, 1), doc="grouping axis (1: along input features)"),
        SKIP,
    ),
    doc="the hqq library driven directly (transformers 5 refuses HqqConfig)",
    module_classes=("Linear", "Conv1D"),
)


def as_linear(module: nn.Module) -> nn.Linear:
    """``module`` itself, or the ``nn.Linear`` a ``Conv1D`` stands for (same function: y = x W^T + b)."""
    if not is_conv1d(module):
        return module
    w = weight_matrix(module)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None, dtype=w.dtype, device=w.device)
    linear.weight.data.copy_(w)
    if module.bias is not None:
        linear.bias.data.copy_(module.bias)
    return linear


@register(SCHEMA)
def hqq_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    o = cfg.options
    model = copy.deepcopy(reference.model)
    targets = target_modules(model, o["skip"])
    qconf = BaseQuantizeConfig(nbits=o["bits"], group_size=o["group_size"], axis=o["axis"])
    device = spec.device if spec.device.startswith("cuda") else "cpu"
    for name in tqdm(targets, desc=f"hqq {o['bits']}-bit", unit="module", leave=False):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = as_linear(getattr(parent, child))
        setattr(parent, child, HQQLinear(linear, qconf, compute_dtype=DTYPES[o["compute_dtype"]], device=device))

    def is_quantized(name: str, module: nn.Module) -> bool:
        return isinstance(module, HQQLinear) and module.meta.get("nbits") == o["bits"]

    # hqq's 8-bit codes are one uint8 per weight: counted at 8 bits, the same as their bytes
    return BackendResult(model=model, targets=targets, is_quantized=is_quantized, code_bits=dict.fromkeys(targets, 8))
