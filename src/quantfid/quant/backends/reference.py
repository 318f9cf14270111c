"""The ``reference`` backend: the unquantized model itself, the cohort's anchor (KLD 0 by construction)."""

from __future__ import annotations

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.registry import register
from quantfid.quant.schema import BackendSchema

SCHEMA = BackendSchema(
    "reference", (), doc="the unquantized reference (the cohort's anchor, KLD 0)", aliases=("none",)
)


@register(SCHEMA)
def reference_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    """No copy: the reference model object is returned as is (do not modify it)."""
    return BackendResult(model=reference.model, targets=[], is_quantized=lambda name, module: False)
