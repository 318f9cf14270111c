"""GPTQ through transformers' ``GPTQConfig`` (optimum + gptqmodel), calibrated on held-in Python source.

gptqmodel is not a core dependency: 7.7.0 ships only an sdist (pure Python, builds in seconds) whose metadata asks
for torch>=2.14.1, so it is installed with ``--no-deps`` (plus its small deps) next to the pinned torch 2.13.0, where
it works. On CPU the result runs on gptqmodel's portable ``TorchLinear`` kernel: the kernel ``auto`` picks on an
AVX-512 CPU gives the same logits but fails the forward pass at group_size=-1. Packing JIT-compiles a small C++
extension on first use (~40 s, cached in ``~/.cache/gptqmodel``; without a compiler it falls back to Python).
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from quantfid.data import corpus
from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult, QuantUnavailableError
from quantfid.quant.config import QuantConfig
from quantfid.quant.hf_common import load_quantized, split_targets
from quantfid.quant.registry import register
from quantfid.quant.schema import SKIP, BackendSchema, Option, QuantConfigError

SCHEMA = BackendSchema(
    "gptq",
    (
        Option("bits", int, choices=(2, 3, 4, 8)),
        Option("group_size", int, default=128, choices=(-1, 32, 64, 128)),
        Option("sym", bool, default=True),
        Option("desc_act", bool, default=False),
        Option("calibration_samples", int, default=64, check=lambda v: None if v > 0 else "must be > 0"),
        SKIP,
    ),
    doc="GPTQ through transformers' GPTQConfig (optimum + gptqmodel 7.7), on CPU or CUDA",
    module_classes=("Linear", "Conv1D"),
)


def calibration_batches(tokenizer: PreTrainedTokenizerBase, n: int, seqlen: int) -> list[dict[str, list[list[int]]]]:
    """``n`` windows of exactly ``seqlen`` tokens of held-in stdlib source, already tokenized.

    optimum tokenizes a list of strings without truncation, so text calibration ran past the model's positions
    (2,000 characters are ~780 organism tokens against 256 positions) and calibrated on activations it never sees.
    """
    files = corpus.stdlib_files("train")
    chars = n * seqlen * 4
    while True:
        text = corpus.read_text(files, max_chars=chars)
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= n * seqlen or len(text) < chars:  # enough tokens, or the whole corpus read
            break
        chars *= 2
    if len(ids) < n * seqlen:
        raise QuantConfigError(f"quant.calibration_samples={n}: the corpus holds only {len(ids) // seqlen} windows")
    return [{"input_ids": [ids[i * seqlen : (i + 1) * seqlen]], "attention_mask": [[1] * seqlen]} for i in range(n)]


@register(SCHEMA)
def gptq_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    try:
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    except ImportError as err:
        raise QuantUnavailableError(
            f"quant={cfg.name!r} needs gptqmodel: pip install --no-deps gptqmodel==7.7.0 plus its small deps "
            "(see docs/quant.md); a plain install pulls torch>=2.14.1"
        ) from err
    from transformers import GPTQConfig

    o = cfg.options
    targets, keep = split_targets(reference, cfg)
    if keep != ["lm_head"]:
        raise QuantConfigError(
            f"quant.skip={o['skip']!r}: the gptq backend quantizes every decoder-block Linear and never lm_head; "
            "allowed: ['lm_head']"
        )
    seqlen = min(getattr(reference.model.config, "max_position_embeddings", None) or 2048, 2048)
    qconf = GPTQConfig(
        bits=o["bits"],
        group_size=o["group_size"],
        sym=o["sym"],
        desc_act=o["desc_act"],
        act_group_aware=o["group_size"] > 0,  # GAR reorders within groups: gptqmodel refuses it at group_size=-1
        dataset=calibration_batches(reference.tokenizer, o["calibration_samples"], seqlen),
        model_seqlen=seqlen,
        backend="auto" if spec.device.startswith("cuda") else "gptq_torch",
    )
    model = load_quantized(spec, cfg, qconf)

    def is_quantized(name: str, module: nn.Module) -> bool:
        # the kernel class depends on the device and CPU (TorchCpuAvx512Linear, TorchLinear, Marlin...): all derive
        # from gptqmodel's BaseQuantLinear
        return isinstance(module, BaseQuantLinear)

    return BackendResult(model=model, targets=targets, is_quantized=is_quantized)
