"""The ``reference`` backend: the unquantized model itself, the cohort's anchor (KLD 0 by construction)."""

from __future__ import annotations

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult, register
from quantfid.quant.config import QuantConfig


@register("reference")
def reference_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    """No copy: the reference model object is returned as is (do not modify it)."""
    return BackendResult(model=reference.model, targets=[], is_quantized=lambda name, module: False)
