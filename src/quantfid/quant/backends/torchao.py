"""torchao through transformers' ``TorchAoConfig`` with torchao config objects (strings are gone in torchao 0.18).

torchao keeps ``nn.Linear`` and swaps the weight for a tensor subclass: quantization is recognised by the weight's
type. ``int4_weight_only`` (``Int4WeightOnlyConfig``) has no CPU path here: it is a GPU-only config.
"""

from __future__ import annotations

import torch
from torch import nn

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.hf_common import load_quantized, not_convert_patterns, split_targets
from quantfid.quant.registry import register
from quantfid.quant.schema import SKIP, BackendSchema, Option


def _grouped(cfg) -> bool:
    return cfg.get("method") in ("intx_weight_only", "int4_weight_only")


SCHEMA = BackendSchema(
    "torchao",
    (
        Option(
            "method",
            str,
            choices=("int8_weight_only", "int8_dynamic", "float8_weight_only", "intx_weight_only", "int4_weight_only"),
        ),
        Option(
            "bits",
            int,
            default=4,
            choices=(1, 2, 3, 4, 5, 6, 7, 8),
            applies=lambda c: c.get("method") == "intx_weight_only",
            applies_doc="method=intx_weight_only",
        ),
        Option(
            "group_size",
            int,
            default=32,
            choices=(32, 64, 128, 256),
            applies=_grouped,
            applies_doc="method=intx_weight_only or int4_weight_only",
        ),
        SKIP,
    ),
    doc="torchao through transformers' TorchAoConfig with torchao config objects",
    gpu_only=lambda c: (
        "torchao Int4WeightOnlyConfig has no CPU path in torchao 0.18 (its weight conversion fails on CPU in "
        "every packing format); use method=intx_weight_only with bits=4 on CPU"
        if c.get("method") == "int4_weight_only"
        else None
    ),
    module_classes=("Linear",),
)


def torchao_config_object(cfg: QuantConfig):
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    o = cfg.options
    method = o["method"]
    if method == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if method == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if method == "float8_weight_only":
        return Float8WeightOnlyConfig()
    if method == "intx_weight_only":
        return IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{o['bits']}"), granularity=PerGroup(o["group_size"])
        )
    return Int4WeightOnlyConfig(group_size=o["group_size"])


def code_width(cfg: QuantConfig) -> int:
    """Bits of one weight code; intx stores its codes unpacked, one per int8."""
    return cfg.options.get("bits", 4) if cfg.options["method"] in ("intx_weight_only", "int4_weight_only") else 8


@register(SCHEMA)
def torchao_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    from torchao.utils import TorchAOBaseTensor
    from transformers import TorchAoConfig

    targets, keep = split_targets(reference, cfg)
    qconf = TorchAoConfig(quant_type=torchao_config_object(cfg), modules_to_not_convert=not_convert_patterns(keep))
    model = load_quantized(spec, cfg, qconf)

    def is_quantized(name: str, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and isinstance(module.weight, TorchAOBaseTensor)

    bits = code_width(cfg)
    return BackendResult(
        model=model, targets=targets, is_quantized=is_quantized, code_bits=dict.fromkeys(targets, bits)
    )
