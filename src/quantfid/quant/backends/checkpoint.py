"""An already-quantized checkpoint as a quant: a local directory or hub id that transformers loads through its own
``quantization_config`` (GPTQ, AWQ, bitsandbytes, compressed-tensors, ...), measured against the reference.

Before loading the weights, its tokenizer must encode exactly as the reference's (same tokenizer fingerprint; a
checkpoint without tokenizer files uses the reference's) and its architecture must be the reference's (same
``architectures``, ``model_type``, vocabulary size, widths and depth); anything else is refused naming both. The
modules the checkpoint quantized are those that are no longer a float ``nn.Linear``/``Conv1D`` (or whose weight is a
tensor subclass): its own ``modules_to_not_convert`` decides, not quantfid. The checkpoint's files are hashed into the
quant fingerprint: re-saving another checkpoint at the same path is a new quant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantfid.models.loading import (
    ModelSpec,
    Reference,
    checkpoint_digest,
    load_model,
    resolve_name,
    tokenizer_fingerprint,
)
from quantfid.quant.base import (
    BackendResult,
    QuantUnavailableError,
    capture_transformers_log,
    load_failure,
    weight_class,
    weight_module_names,
)
from quantfid.quant.config import QuantConfig
from quantfid.quant.registry import register
from quantfid.quant.schema import BackendSchema, Option

#: config fields that must agree between reference and checkpoint (the same network, quantized)
ARCH_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "n_embd",
    "n_layer",
    "n_head",
)


def _nonempty(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or value == "???":  # ???: conf/quant/checkpoint.yaml's
        return "is required: give the checkpoint, e.g. quantfid-sweep quant=checkpoint quant.path=/models/my-gptq"
    return None


SCHEMA = BackendSchema(
    "checkpoint",
    (
        Option("path", str, check=_nonempty, doc="local directory or hub id of an already-quantized checkpoint"),
        Option("revision", str, default=None, doc="hub revision (ignored for a local directory)"),
    ),
    doc="an already-quantized checkpoint loaded by transformers through its quantization_config",
    module_classes=(),  # the checkpoint decides what it quantized
    identity=lambda o: checkpoint_digest(str(o["path"]), o.get("revision")),
)


def _config_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def check_match(cfg: QuantConfig, reference: Reference) -> None:
    """Refuse a checkpoint whose tokenizer or architecture is not the reference's (before loading its weights)."""
    from transformers import AutoConfig, AutoTokenizer

    path, rev = resolve_name(cfg.options["path"]), cfg.options.get("revision")
    try:
        ck = AutoConfig.from_pretrained(path, revision=rev)
    except (OSError, ValueError) as err:
        raise QuantUnavailableError(
            f"quant.path={cfg.options['path']!r} (quant={cfg.name!r}): no checkpoint config could be read ({err}); "
            "give a local checkpoint directory or a hub id in the local cache"
        ) from err
    ref, got = _config_dict(reference.model.config), _config_dict(ck)
    archs = (ref.get("architectures"), got.get("architectures"))
    diffs = {k: (ref.get(k), got.get(k)) for k in ARCH_FIELDS if ref.get(k) != got.get(k)}
    if archs[0] != archs[1] or diffs:
        raise QuantUnavailableError(
            f"quant={cfg.name!r}: checkpoint {cfg.options['path']!r} is not a quant of the reference: architectures "
            f"{archs[1]} vs the reference's {archs[0]}; differing config fields (reference, checkpoint): {diffs}"
        )
    if not got.get("quantization_config"):
        raise QuantUnavailableError(
            f"quant={cfg.name!r}: checkpoint {cfg.options['path']!r} has no quantization_config in its config.json: "
            "it is not a quantized checkpoint (measure a full-precision model as the reference instead)"
        )
    local = Path(path)
    has_tok = not local.is_dir() or any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if has_tok:
        try:
            tok = AutoTokenizer.from_pretrained(path, revision=rev)
        except (OSError, ValueError) as err:
            raise QuantUnavailableError(
                f"quant={cfg.name!r}: the tokenizer of checkpoint {cfg.options['path']!r} cannot be loaded: {err}"
            ) from err
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        fp, ref_fp = tokenizer_fingerprint(tok), tokenizer_fingerprint(reference.tokenizer)
        if fp != ref_fp:
            raise QuantUnavailableError(
                f"quant={cfg.name!r}: the tokenizer of checkpoint {cfg.options['path']!r} (fingerprint {fp}, "
                f"{len(tok)} tokens) differs from the reference's ({ref_fp}, {len(reference.tokenizer)} tokens): "
                "their token ids mean other strings; quantize the reference's own checkpoint"
            )


def is_quantized_module(module: nn.Module) -> bool:
    """A module a quantization library put in place of a float weight matrix: not a float ``nn.Linear``/``Conv1D``
    any more, or one whose weight is a tensor subclass or an integer/packed tensor."""
    if weight_class(module) is None:  # replaced by a library's own module (GPTQ, HQQ, ...)
        return any(hasattr(module, a) for a in ("qweight", "weight", "W_q"))
    weight = getattr(module, "weight", None)  # kept nn.Linear (bnb, quanto, torchao): a quantized weight tensor
    return not (type(weight) in (torch.Tensor, nn.Parameter) and weight.is_floating_point())


@register(SCHEMA)
def checkpoint_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    check_match(cfg, reference)
    ck_spec = ModelSpec(
        cfg.options["path"], dtype=spec.dtype, device=spec.device, revision=cfg.options.get("revision"),
        trust_remote_code=spec.trust_remote_code,
    )  # fmt: skip
    kwargs = {"device_map": spec.device}  # placed while loading: quantized models may refuse a later .to()
    with capture_transformers_log() as lines:
        try:
            model = load_model(ck_spec, **kwargs)
        except (RuntimeError, ValueError, ImportError) as err:
            raise load_failure(cfg, err, lines) from err
    modules = dict(model.named_modules())
    targets = [n for n in weight_module_names(reference.model) if n in modules and is_quantized_module(modules[n])]
    return BackendResult(model=model, targets=targets, is_quantized=lambda name, m: is_quantized_module(m))
