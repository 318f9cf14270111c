"""A GGUF file as a quant of the reference: read its facts, run it with the chosen runtime, hand it to verification.

Shared by the ``gguf`` backend (files quantfid makes) and the ``gguf_file`` backend (the user's own files). The file
accounts for the quant (:class:`quantfid.quant.base.WeightsFile`: stored type per reference Linear, bits per weight
and bytes from its tensors); :func:`quantfid.quant.quantize` then checks every Linear is stored quantized and that
the logits moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult, WeightsFile, probe_batch, weight_module_names
from quantfid.quant.config import QuantConfig
from quantfid.quant.gguf.quantize import linear_facts, read_facts
from quantfid.quant.gguf.runtime import load_llama_cpp, load_transformers


def file_quant(
    spec: ModelSpec, cfg: QuantConfig, reference: Reference, path: Path, extra: dict[str, Any] | None = None
) -> BackendResult:
    """The quant stored in ``path``, loaded with ``cfg.options['runtime']``; every reference Linear is a target."""
    facts = read_facts(path)
    types, bpw, details = linear_facts(reference, facts)
    runtime = cfg.options["runtime"]
    if runtime == "llama_cpp":
        model: nn.Module = load_llama_cpp(path, reference.model.config, probe_batch(reference)[0].tolist())
    else:
        model = load_transformers(path, spec)
    ref_type = details["reference_type"]
    wf = WeightsFile(
        path=str(path),
        tensor_types=types,
        bits_per_weight=bpw,
        model_bytes=facts.total_bytes,
        details={**details, "gguf_file": str(path), "runtime": runtime, **(extra or {})},
    )

    def is_quantized(name: str, module: nn.Module | None) -> bool:
        return types.get(name, ref_type) != ref_type

    targets = weight_module_names(reference.model)
    return BackendResult(model=model, targets=targets, is_quantized=is_quantized, weights_file=wf)
