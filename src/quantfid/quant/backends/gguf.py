"""GGUF quants made by llama.cpp itself: the reference exported to GGUF, quantized by llama.cpp's quantizer to a named
file type (``type: Q4_K_M``), with an importance matrix from the calibration corpus where the type needs or benefits
from one, run through llama.cpp's kernels or dequantized into torch (``runtime``). See quantfid.quant.gguf.
"""

from __future__ import annotations

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.gguf.export import arch_of
from quantfid.quant.gguf.imatrix import get_or_build_imatrix
from quantfid.quant.gguf.load import file_quant
from quantfid.quant.gguf.quantize import gguf_cache, quantize_file, require_llama_cpp
from quantfid.quant.gguf.runtime import RUNTIMES
from quantfid.quant.gguf.types import REQUIRES_IMATRIX, check_type, uses_imatrix
from quantfid.quant.registry import register
from quantfid.quant.schema import BackendSchema, Option, QuantConfigError


def _positive(v: object) -> str | None:
    return None if isinstance(v, int) and v > 0 else "must be a positive integer"


def _with_imatrix(c) -> bool:
    return uses_imatrix(c.get("type", ""), c.get("imatrix"))


SCHEMA = BackendSchema(
    "gguf",
    (
        Option("type", str, check=check_type, doc="llama-quantize file type: Q8_0, Q6_K, Q4_K_M, IQ4_XS, Q2_K, ..."),
        Option("runtime", str, default="llama_cpp", choices=RUNTIMES, doc="llama.cpp kernels or dequantized in torch"),
        Option(
            "imatrix",
            bool,
            default=None,
            doc="importance matrix from the calibration corpus; null: on for the IQ1/IQ2/IQ3 types (and Q2_K_S)",
        ),
        Option(
            "imatrix_chunks",
            int,
            default=32,
            check=_positive,
            applies=_with_imatrix,
            applies_doc="an importance matrix is used",
            doc="calibration chunks (held-in source)",
        ),
        Option(
            "imatrix_chunk_size",
            int,
            default=256,
            check=_positive,
            applies=_with_imatrix,
            applies_doc="an importance matrix is used",
            doc="tokens per chunk (capped at the model's context)",
        ),
        Option("source_type", str, default="F32", choices=("F32", "F16"), doc="precision of the exported reference"),
    ),
    doc="llama.cpp's quantizer (llama-cpp-python) on the reference exported to GGUF; llama_cpp or transformers runtime",
)


@register(SCHEMA)
def gguf_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    o = cfg.options
    if o["imatrix"] is False and o["type"] in REQUIRES_IMATRIX:
        raise QuantConfigError(
            f"quant.imatrix=false: llama.cpp makes {o['type']} only with an importance matrix; use imatrix: true "
            "(or null) or another type"
        )
    require_llama_cpp(f"quant={cfg.name!r} (backend gguf)")
    arch_of(reference.model)  # an unmapped architecture is refused before anything is computed
    imatrix = None
    if uses_imatrix(o["type"], o["imatrix"]):
        imatrix = get_or_build_imatrix(reference, gguf_cache(reference), o["imatrix_chunks"], o["imatrix_chunk_size"])
    path, seconds = quantize_file(reference, o["type"], o["source_type"], imatrix)
    extra = {"gguf_type": o["type"], "imatrix_sha": imatrix[1] if imatrix else "", "gguf_quantize_seconds": seconds}
    return file_quant(spec, cfg, reference, path, extra)
