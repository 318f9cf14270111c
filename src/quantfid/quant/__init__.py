"""Quantize stage: real backends behind one registry, configs validated before any model is loaded.

Public surface (stable):

- ``QuantConfigError(ValueError)``: a bad quant config; the message names the field and the allowed values.
- ``validate_quant_config(cfg: Mapping) -> QuantConfig``: schema check + defaults, no model needed.
  ``QuantConfig.resolved`` is the resolved dict (what tracking logs as ``quant.*`` params); ``.is_reference``.
- ``quantize(spec: ModelSpec, cfg, reference=None) -> QuantizedModel`` with ``model`` (eval mode; use it under
  ``torch.no_grad``, not ``inference_mode``), ``name``, ``config`` (resolved dict), ``fingerprint`` (hash of the
  resolved config and the reference fingerprint; the reference's own for the reference), ``bits_per_weight``
  (effective, over the quantized Linear weights, codes + scales/zeros as stored), ``model_bytes`` (whole model as
  stored), ``verification`` (what changed) and ``is_reference``. Raises ``QuantUnavailableError`` (a GPU-only config
  on CPU, a missing optional library) before loading, and ``QuantVerificationError`` when the loaded model is not
  quantized as asked (e.g. a silent full-precision fallback). ``reference_quant(reference)``: the reference in that
  shape, built from nothing.
- ``load_quant_config(name) -> dict`` reads ``conf/quant/<name>.yaml``; ``cohort(name="organism") -> list[str]``
  reads ``conf/cohort/<name>.yaml``; ``quant_fingerprint(cfg, reference_fingerprint)``.

Backends (``backend:`` key) are the modules of :mod:`quantfid.quant.backends`, each declaring its options
(:class:`quantfid.quant.schema.BackendSchema`) and registering itself (:mod:`quantfid.quant.registry`);
``backend_schemas()`` lists them (docs/quant.md documents each).
"""

from quantfid.quant.base import (
    QuantizedModel,
    QuantUnavailableError,
    QuantVerificationError,
    quantize,
    reference_quant,
)
from quantfid.quant.config import (
    QuantConfig,
    available_quant_configs,
    cohort,
    load_quant_config,
    quant_fingerprint,
    validate_quant_config,
)
from quantfid.quant.registry import schemas as backend_schemas
from quantfid.quant.schema import QuantConfigError

__all__ = [
    "QuantConfig",
    "QuantConfigError",
    "QuantUnavailableError",
    "QuantVerificationError",
    "QuantizedModel",
    "available_quant_configs",
    "backend_schemas",
    "cohort",
    "load_quant_config",
    "quant_fingerprint",
    "quantize",
    "reference_quant",
    "validate_quant_config",
]
