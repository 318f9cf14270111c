"""optimum-quanto through transformers' ``QuantoConfig``: int8, float8, int4, int2 weights.

int4/int2 models raise "Cannot set version_counter for inference tensor" under ``torch.inference_mode`` (quanto
issue #304): run them under ``torch.no_grad``. Quanto models cannot be ``save_pretrained``.
"""

from __future__ import annotations

from torch import nn

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.hf_common import load_quantized, not_convert_patterns, split_targets
from quantfid.quant.registry import register
from quantfid.quant.schema import SKIP, BackendSchema, Option

SCHEMA = BackendSchema(
    "quanto",
    (Option("weights", str, choices=("int8", "float8", "int4", "int2"), doc="weight dtype"), SKIP),
    doc="optimum-quanto through transformers' QuantoConfig (int4/int2 need torch.no_grad, not inference_mode)",
    module_classes=("Linear",),
)


@register(SCHEMA)
def quanto_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    from optimum.quanto import QTensor
    from optimum.quanto.nn import QLinear
    from transformers import QuantoConfig

    targets, keep = split_targets(reference, cfg)
    qconf = QuantoConfig(weights=cfg.options["weights"], modules_to_not_convert=not_convert_patterns(keep))
    model = load_quantized(spec, cfg, qconf)

    def is_quantized(name: str, module: nn.Module) -> bool:
        # quanto weights report float32 (a tensor subclass): recognise them by type
        return isinstance(module, QLinear) and isinstance(module.weight, QTensor)

    return BackendResult(model=model, targets=targets, is_quantized=is_quantized)
