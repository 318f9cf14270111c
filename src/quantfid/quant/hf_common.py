"""What the transformers-driven backends share: exact skip names and loading with the LOAD REPORT captured."""

from __future__ import annotations

import re

from torch import nn

from quantfid.models.loading import ModelSpec, Reference, load_model
from quantfid.quant.base import capture_transformers_log, load_failure, target_modules, weight_module_names
from quantfid.quant.config import QuantConfig


def split_targets(reference: Reference, cfg: QuantConfig) -> tuple[list[str], list[str]]:
    """(modules to quantize, modules to keep) as exact names of the reference's ``nn.Linear`` modules."""
    targets = target_modules(reference.model, cfg.options["skip"])
    keep = [n for n in weight_module_names(reference.model) if n not in set(targets)]
    return targets, keep


def not_convert_patterns(keep: list[str]) -> list[str]:
    """transformers matches ``modules_to_not_convert`` as anchored regexes: escape the exact names."""
    return [re.escape(n) for n in keep]


def load_quantized(spec: ModelSpec, cfg: QuantConfig, quantization_config) -> nn.Module:
    """``from_pretrained`` with the quantization config; a failed conversion raises with its logged cause."""
    kwargs = {"quantization_config": quantization_config}
    if spec.device.startswith("cuda"):
        kwargs["device_map"] = spec.device
    with capture_transformers_log() as lines:
        try:
            return load_model(spec, **kwargs)
        except (RuntimeError, ValueError, ImportError) as err:
            raise load_failure(cfg, err, lines) from err
