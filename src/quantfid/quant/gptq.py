"""GPTQ through transformers' ``GPTQConfig`` (optimum + gptqmodel), calibrated on held-in Python source.

GPU-only here: gptqmodel 7.7 needs torch>=2.14.1; 7.6.0 runs on CPU but compiles a C++ extension for minutes and pins
numpy 2.2.6, so it is not a core dependency. On CPU the config fails before any model load with a clear error.
"""

from __future__ import annotations

from torch import nn

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult, QuantUnavailableError, register
from quantfid.quant.config import QuantConfig, QuantConfigError
from quantfid.quant.hf_common import load_quantized, split_targets


def calibration_texts(n: int, chars: int = 2000) -> list[str]:
    from quantfid.organism import corpus

    text = corpus.read_text(corpus.stdlib_files("train"), max_chars=n * chars)
    return [text[i * chars : (i + 1) * chars] for i in range(n)]


@register("gptq")
def gptq_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    try:
        import gptqmodel  # noqa: F401
    except ImportError as err:
        raise QuantUnavailableError(
            f"quant={cfg.name!r} needs gptqmodel (pip install 'gptqmodel' on a CUDA machine with a matching torch)"
        ) from err
    from transformers import GPTQConfig

    o = cfg.options
    targets, keep = split_targets(reference, cfg)
    if keep != ["lm_head"]:
        raise QuantConfigError(
            f"quant.skip={o['skip']!r}: the gptq backend quantizes every decoder-block Linear and never lm_head; "
            "allowed: ['lm_head']"
        )
    qconf = GPTQConfig(
        bits=o["bits"],
        group_size=o["group_size"],
        sym=o["sym"],
        desc_act=o["desc_act"],
        dataset=calibration_texts(o["calibration_samples"]),
        tokenizer=reference.tokenizer,
    )
    model = load_quantized(spec, cfg, qconf)

    def is_quantized(name: str, module: nn.Module) -> bool:
        return "QuantLinear" in type(module).__name__

    return BackendResult(model=model, targets=targets, is_quantized=is_quantized)
