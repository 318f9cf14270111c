"""bitsandbytes through transformers' ``BitsAndBytesConfig``: LLM.int8() and 4-bit NF4/FP4 (+ double quant)."""

from __future__ import annotations

import torch
from torch import nn

from quantfid.models.loading import DTYPES, ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.hf_common import load_quantized, not_convert_patterns, split_targets
from quantfid.quant.registry import register
from quantfid.quant.schema import FLOAT_DTYPES, SKIP, BackendSchema, Option


def _is4(cfg) -> bool:
    return cfg.get("bits") == 4


SCHEMA = BackendSchema(
    "bnb",
    (
        Option("bits", int, choices=(4, 8), doc="LLM.int8() or 4-bit"),
        Option("quant_type", str, default="nf4", choices=("nf4", "fp4"), applies=_is4, applies_doc="bits=4"),
        Option("double_quant", bool, default=False, applies=_is4, applies_doc="bits=4"),
        Option("compute_dtype", str, default="float32", choices=FLOAT_DTYPES, applies=_is4, applies_doc="bits=4"),
        SKIP,
    ),
    doc="bitsandbytes through transformers' BitsAndBytesConfig",
    module_classes=("Linear", "Conv1D"),
)


def bnb_quantization_config(cfg: QuantConfig, keep: list[str]):
    from transformers import BitsAndBytesConfig

    o = cfg.options
    if o["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=not_convert_patterns(keep))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=o["quant_type"],
        bnb_4bit_use_double_quant=o["double_quant"],
        bnb_4bit_compute_dtype=DTYPES[o["compute_dtype"]],
        llm_int8_skip_modules=not_convert_patterns(keep),
    )


@register(SCHEMA)
def bnb_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    import bitsandbytes as bnb

    targets, keep = split_targets(reference, cfg)
    model = load_quantized(spec, cfg, bnb_quantization_config(cfg, keep))
    cls, param, dtype = (
        (bnb.nn.Linear8bitLt, bnb.nn.Int8Params, torch.int8)
        if cfg.options["bits"] == 8
        else (bnb.nn.Linear4bit, bnb.nn.Params4bit, torch.uint8)
    )

    double_quant = cfg.options.get("double_quant", False)

    def is_quantized(name: str, module: nn.Module) -> bool:
        if not (isinstance(module, cls) and isinstance(module.weight, param) and module.weight.dtype == dtype):
            return False
        state = getattr(module.weight, "quant_state", None)
        # double quant asked for: the absmax must itself be quantized (a nested state), checked before any forward
        return not double_quant or bool(getattr(state, "nested", False) or getattr(state, "original_nested", False))

    return BackendResult(model=model, targets=targets, is_quantized=is_quantized)
