"""Quantize stage: real backends behind one registry, configs validated before any model is loaded.

Public surface (stable):

- ``QuantConfigError(ValueError)``: a bad quant config; the message names the field and the allowed values.
- ``validate_quant_config(cfg: Mapping) -> QuantConfig``: schema check + defaults, no model needed.
  ``QuantConfig.resolved`` is the resolved dict (what tracking logs as ``quant.*`` params).
- ``quantize(spec: ModelSpec, cfg, reference=None) -> QuantizedModel`` with ``model`` (eval mode; use it under
  ``torch.no_grad``, not ``inference_mode``), ``name``, ``config`` (resolved dict), ``fingerprint`` (hash of the
  resolved config and the reference fingerprint), ``bits_per_weight`` (effective, over the quantized Linear weights,
  codes + scales/zeros as stored), ``model_bytes`` (whole model as stored) and ``verification`` (what changed).
  Raises ``QuantUnavailableError`` (a GPU-only config on CPU, a missing optional library) before loading, and
  ``QuantVerificationError`` when the loaded model is not quantized as asked (e.g. a silent full-precision fallback).
- ``load_quant_config(name) -> dict`` reads ``conf/quant/<name>.yaml``; ``cohort(name="organism") -> list[str]``
  reads ``conf/cohort/<name>.yaml``; ``quant_fingerprint(cfg, reference_fingerprint)``.

Backends (``backend:`` key): ``reference`` (alias ``none``), ``rtn``, ``bnb``, ``quanto``, ``torchao``, ``hqq``,
``gptq``; their options are declared in :data:`quantfid.quant.config.SCHEMAS` and documented in docs/quant.md.
"""

from quantfid.quant import backends as _backends  # noqa: F401  (registers every backend)
from quantfid.quant.base import (
    BACKENDS,
    QuantizedModel,
    QuantUnavailableError,
    QuantVerificationError,
    quantize,
)
from quantfid.quant.config import (
    SCHEMAS,
    QuantConfig,
    QuantConfigError,
    available_quant_configs,
    cohort,
    load_quant_config,
    quant_fingerprint,
    validate_quant_config,
)

__all__ = [
    "BACKENDS",
    "SCHEMAS",
    "QuantConfig",
    "QuantConfigError",
    "QuantUnavailableError",
    "QuantVerificationError",
    "QuantizedModel",
    "available_quant_configs",
    "cohort",
    "load_quant_config",
    "quant_fingerprint",
    "quantize",
    "validate_quant_config",
]
