"""The backend registry, :func:`quantize` and the verification that a quant really is one.

Every backend turns (model spec, validated config, loaded reference) into a model and says which modules it meant to
change and how to recognise a changed one (by class or weight tensor type, never by dtype alone: quanto and torchao
weights report float32). :func:`quantize` then verifies: every intended module changed, no skipped module changed,
and the logits on a probe batch differ from the reference's. A config that silently fell back to full precision is
an error, not a data point.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from quantfid.api.divergence import token_kld
from quantfid.models.loading import ModelSpec, Reference, load_reference
from quantfid.quant import registry
from quantfid.quant.config import QuantConfig, quant_fingerprint, validate_quant_config
from quantfid.quant.storage import model_bits, module_tensors, tensor_bits

log = logging.getLogger(__name__)

PROBE_TEXT = (
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)\n"
    "Q: 7 * 8 = ? A: 56\nreverse: stone -> enots\n"
)


class QuantUnavailableError(RuntimeError):
    """The config is valid but cannot run here (needs CUDA, or an optional library); the message says what to do."""


class QuantVerificationError(RuntimeError):
    """The loaded quant is not what the config asked for (e.g. a silent fallback to full precision)."""


@dataclass
class BackendResult:
    """What a backend hands back: the model and how to recognise its quantized modules."""

    model: nn.Module
    targets: list[str]  # module names the config meant to quantize
    is_quantized: Callable[[str, nn.Module], bool]
    code_bits: dict[str, int] = field(default_factory=dict)  # module name -> code width, for unpacked code tensors
    storage_bits: Callable[[str, nn.Module], int] | None = None  # override for fake-quant backends (RTN)
    weights_file: WeightsFile | None = None  # quants whose weights live in a file (GGUF): it accounts and verifies


@dataclass
class WeightsFile:
    """A quant whose weights live in a file a runtime reads (a GGUF run by llama.cpp has no torch modules at all):
    the file, not the model object, says which reference Linear was stored how and what it costs.

    ``tensor_types`` maps each reference ``nn.Linear`` name to its stored type (e.g. ``Q4_K``); ``bits_per_weight``
    and ``model_bytes`` are counted from the file's tensors (quantized Linear weights; the whole model)."""

    path: str
    tensor_types: dict[str, str]
    bits_per_weight: float
    model_bytes: int
    details: dict[str, Any] = field(default_factory=dict)


class BuildFn(Protocol):
    """What a backend registers with ``@register(SCHEMA)``: build the quant of the loaded reference."""

    def __call__(self, spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult: ...


@dataclass
class QuantizedModel:
    """A loaded, verified quant. ``model`` is in eval mode; run it under ``torch.no_grad`` (not ``inference_mode``:
    quanto int4/int2 fail there)."""

    model: nn.Module
    name: str
    config: dict[str, Any]
    fingerprint: str
    bits_per_weight: float
    model_bytes: int
    verification: dict[str, Any]
    reference_fingerprint: str = ""

    @property
    def is_reference(self) -> bool:
        """The unquantized reference itself (backend ``reference``), the anchor every flip is counted against."""
        return self.fingerprint == self.reference_fingerprint


def reference_quant(reference: Reference) -> QuantizedModel:
    """The reference in the shape of a quant, without building anything: its outcomes are what flips are counted
    against. Same fingerprint, config and size facts as ``quantize(spec, {"name": "reference", "backend":
    "reference"}, reference)``."""
    qc = validate_quant_config({"name": "reference", "backend": "reference"})
    bits = float(next(reference.model.parameters()).element_size() * 8)
    return QuantizedModel(
        model=reference.model,
        name=qc.name,
        config=qc.resolved,
        fingerprint=quant_fingerprint(qc, reference.fingerprint),
        bits_per_weight=bits,
        model_bytes=int(model_bits(reference.model) // 8),
        verification={},
        reference_fingerprint=reference.fingerprint,
    )


#: Module classes whose ``weight`` is a matrix a backend may quantize, by class name: ``nn.Linear`` and transformers'
#: ``Conv1D`` (GPT-2 family; weight stored transposed, (in, out)). Matched by name so that a subclass such as a
#: library's ``Linear8bitLt`` is not mistaken for a float target.
WEIGHT_CLASSES = ("Linear", "Conv1D")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: a Linear whose weight is stored (in_features, out_features)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_class(module: nn.Module) -> str | None:
    """``"Linear"`` (any ``nn.Linear``), ``"Conv1D"`` or None: the kind a backend declares it can replace."""
    if isinstance(module, nn.Linear):
        return "Linear"
    return "Conv1D" if is_conv1d(module) else None


def is_weight_module(module: nn.Module) -> bool:
    return weight_class(module) is not None


def weight_module_names(model: nn.Module) -> list[str]:
    """Every module holding a float weight matrix a backend may quantize (``nn.Linear`` and ``Conv1D``)."""
    return [n for n, m in model.named_modules() if is_weight_module(m)]




def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out_features, in_features), a view (``Conv1D`` stores its transpose)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def in_features(module: nn.Module) -> int:
    return int(weight_matrix(module).shape[1])


def target_modules(model: nn.Module, skip: list[str]) -> list[str]:
    """The weight modules a config quantizes (``nn.Linear`` and ``Conv1D``): all of them but those matching a
    ``skip`` glob."""
    return [n for n in weight_module_names(model) if not any(fnmatch.fnmatch(n, p) for p in skip)]


def architecture(model: nn.Module) -> str:
    """The architecture a refusal names: ``config.architectures[0]`` or the model's class."""
    archs = getattr(getattr(model, "config", None), "architectures", None) or []
    return str(archs[0]) if archs else type(model).__name__


def module_classes(model: nn.Module, names: list[str] | None = None) -> dict[str, int]:
    """Class name -> count of the weight modules (or of ``names``): what an error about targets shows."""
    modules = dict(model.named_modules())
    return dict(
        Counter(type(modules[n]).__name__ for n in (names if names is not None else weight_module_names(model)))
    )


def check_targets(cfg: Mapping[str, Any] | QuantConfig, model: nn.Module) -> list[str] | None:
    """The modules ``cfg`` would quantize in ``model``; refuses (``QuantUnavailableError``) a backend that cannot
    replace some of their classes, or a config that would quantize nothing. Works on a model built on the ``meta``
    device (:func:`quantfid.models.loading.meta_model`), so a sweep's preflight can call it before any weight is
    read. None: the backend's targets are not the config's to choose (an existing checkpoint)."""
    qc = validate_quant_config(cfg)
    if qc.is_reference:
        return []
    schema = registry.get(qc.backend).schema
    if "skip" not in qc.options:  # e.g. an existing checkpoint: what it quantized is its own business
        return None
    targets = target_modules(model, qc.options.get("skip", []))
    if not targets:
        raise QuantUnavailableError(
            f"quant={qc.name!r} (backend {qc.backend!r}) would quantize nothing in {architecture(model)}: its weight "
            f"modules are {module_classes(model)} and quant.skip={qc.options.get('skip')!r} leaves none; a quant "
            "that changes no weight is not a data point"
        )
    kinds = {t: weight_class(model.get_submodule(t)) for t in targets}
    bad = [t for t in targets if kinds[t] not in schema.module_classes]
    if bad:
        unsupported = module_classes(model, bad)
        example = bad[0]
        raise QuantUnavailableError(
            f"quant={qc.name!r}: backend {qc.backend!r} cannot quantize {architecture(model)}: it replaces only "
            f"{list(schema.module_classes)} modules but the model's targets include {unsupported} (e.g. "
            f"{example!r}); those would stay in full precision. Use a backend that handles them "
            f"({', '.join(b for b, s in registry.schemas().items() if set(kinds.values()) <= set(s.module_classes))}) "
            "or skip them with quant.skip"
        )
    return targets


@contextmanager
def capture_transformers_log():
    """Collect transformers' log lines while loading: a failed conversion's cause is only in its LOAD REPORT."""
    lines: list[str] = []

    class _H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _H(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def load_failure(cfg: QuantConfig, err: Exception, lines: list[str]) -> QuantUnavailableError:
    """One error with the cause dug out of the load report (the exception alone says 'issues during conversion')."""
    causes = [
        ln.strip()
        for text in lines
        for ln in text.splitlines()
        if any(k in ln for k in ("Error", "Requires", "requires", "not supported", "No module"))
    ]
    cause = "; ".join(dict.fromkeys(causes[:6])) or str(err)
    return QuantUnavailableError(f"quant={cfg.name!r} (backend {cfg.backend!r}) failed to load: {cause}")


def probe_batch(reference: Reference) -> torch.Tensor:
    ids = reference.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    max_pos = getattr(reference.model.config, "max_position_embeddings", 256) or 256
    return ids[:, : min(ids.shape[1], max_pos)]


@torch.no_grad()
def probe_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device)).logits.float().cpu()


def _weight_type(module: nn.Module) -> str:
    weight = getattr(module, "weight", None)
    if weight is None:
        weight = getattr(module, "W_q", None)
    return type(weight).__name__


def verify(
    cfg: QuantConfig, result: BackendResult, reference: Reference, ref_logits: torch.Tensor, ids: torch.Tensor
) -> dict[str, Any]:
    """Check every intended module changed, no other did, and the logits moved; return what was seen."""
    modules = dict(result.model.named_modules())
    ref_linears = set(weight_module_names(reference.model))
    in_file = result.weights_file is not None  # weights in a file: is_quantized reads the file (module may be None)
    missing = [] if in_file else [t for t in result.targets if t not in modules]
    if missing:
        raise QuantVerificationError(f"quant={cfg.name!r}: intended modules missing after load: {missing[:5]}")
    unchanged = [t for t in result.targets if not result.is_quantized(t, modules.get(t))]
    if unchanged:
        raise QuantVerificationError(
            f"quant={cfg.name!r} (backend {cfg.backend!r}): {len(unchanged)} of {len(result.targets)} intended "
            f"modules of {architecture(reference.model)} were left in full precision (silent fallback), e.g. "
            f"{unchanged[:4]}; classes {sorted({type(modules.get(t)).__name__ for t in unchanged})}; the model's "
            f"weight modules: {module_classes(reference.model)}"
        )
    skipped = sorted(ref_linears - set(result.targets))
    leaked = [s for s in skipped if (in_file or s in modules) and result.is_quantized(s, modules.get(s))]
    if leaked:
        raise QuantVerificationError(f"quant={cfg.name!r}: modules meant to be skipped were quantized: {leaked[:4]}")
    try:
        logits = probe_logits(result.model, ids)
    except Exception as err:  # a quant that cannot run a forward pass is broken, whatever the library says
        raise QuantVerificationError(
            f"quant={cfg.name!r} (backend {cfg.backend!r}): forward pass on the probe batch failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    diff = (logits - ref_logits).abs()
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    kld = token_kld(ref_logits, logits).mean().item()
    if not torch.isfinite(logits).all():
        raise QuantVerificationError(f"quant={cfg.name!r}: non-finite logits on the probe batch")
    if result.targets and diff.max().item() == 0.0:
        raise QuantVerificationError(
            f"quant={cfg.name!r}: logits equal the reference's bit for bit although {len(result.targets)} modules "
            "were quantized: the quantized weights are not used in the forward pass"
        )
    if not result.targets and diff.max().item() != 0.0:
        raise QuantVerificationError(
            f"quant={cfg.name!r} (backend {cfg.backend!r}): nothing was to change in {architecture(reference.model)} "
            f"(weight modules {module_classes(reference.model)}) but the logits differ: the backend replaced modules "
            "quantfid does not count as targets"
        )
    classes = Counter(
        f"{type(result.model).__name__}/{result.weights_file.tensor_types[t]}"
        if result.weights_file is not None
        else f"{type(modules[t]).__name__}/{_weight_type(modules[t])}"
        for t in result.targets
    )
    return {
        "n_intended": len(result.targets),
        "n_quantized": len(result.targets) - len(unchanged),
        "skipped": skipped,
        "module_types": dict(classes),
        "probe_tokens": int(ids.numel()),
        "logits_max_abs_diff": float(diff.max().item()),
        "logits_mean_abs_diff": float(diff.mean().item()),
        "probe_kld_mean": float(kld),
        "probe_top1_agree": float(top1),
    }


def account(result: BackendResult, reference: Reference) -> tuple[float, int, dict[str, Any]]:
    """(effective bits per quantized weight, model bytes, details) from the tensors the quant holds."""
    if result.weights_file is not None:  # counted from the file's own tensors (its block formats, as stored)
        wf = result.weights_file
        return wf.bits_per_weight, wf.model_bytes, dict(wf.details)
    modules = dict(result.model.named_modules())
    ref_modules = dict(reference.model.named_modules())
    code_bits = {t: (ref_modules[t].weight.numel(), result.code_bits[t]) for t in result.code_bits}
    quant_bits, weights = 0, 0
    for t in result.targets:
        weights += ref_modules[t].weight.numel()
        if result.storage_bits is not None:
            quant_bits += result.storage_bits(t, modules[t])
        else:
            numel, bits = code_bits.get(t, (None, None))
            quant_bits += sum(tensor_bits(x, numel, bits) for n, x in module_tensors(modules[t]) if n != "bias")
    total = model_bits(result.model, code_bits)
    if result.storage_bits is not None:  # fake quant: swap the float weights' bits for the packed format's
        total += sum(result.storage_bits(t, modules[t]) - tensor_bits(modules[t].weight) for t in result.targets)
    n_params = sum(p.numel() for p in reference.model.parameters())
    bpw = quant_bits / weights if weights else float(next(reference.model.parameters()).element_size() * 8)
    return bpw, total // 8, {"quantized_weights": weights, "model_bits_per_param": total / n_params}


def quantize(
    spec: ModelSpec, cfg: Mapping[str, Any] | QuantConfig, reference: Reference | None = None
) -> QuantizedModel:
    """Validate ``cfg``, build the quant of ``spec`` with its backend, verify it and account its size.

    ``reference`` (the loaded unquantized model, from :func:`quantfid.models.load_reference`) is loaded from ``spec``
    when not given; pass it when quantizing a cohort so it is loaded once.
    """
    qc = validate_quant_config(cfg)
    reason = qc.gpu_only_reason()
    if reason and not spec.device.startswith("cuda"):
        raise QuantUnavailableError(
            f"quant={qc.name!r} is GPU-only: {reason}. Run it with model.device=cuda on a CUDA machine, or choose a "
            "CPU-capable config."
        )
    if reference is None:
        reference = load_reference(spec)
    started = time.perf_counter()
    ids = probe_batch(reference)
    ref_logits = probe_logits(reference.model, ids)
    expected = check_targets(qc, reference.model)
    result = registry.get(qc.backend).build(spec, qc, reference)
    result.model.eval()
    seconds = time.perf_counter() - started
    if expected is not None and not qc.is_reference and sorted(result.targets) != sorted(expected):
        raise QuantVerificationError(
            f"quant={qc.name!r} (backend {qc.backend!r}): the backend meant to quantize {len(result.targets)} "
            f"modules of {architecture(reference.model)} but the config's targets are {len(expected)} "
            f"({module_classes(reference.model, expected)}); e.g. missing "
            f"{sorted(set(expected) - set(result.targets))[:4]}"
        )
    # account first: bitsandbytes repacks 4-bit weights for its CPU kernel on the first forward (and drops the
    # nested absmax of double quant); the bits reported are those of the format as quantized
    bpw, nbytes, details = account(result, reference)
    ref_bits = float(next(reference.model.parameters()).element_size() * 8)
    if not qc.is_reference and bpw >= ref_bits:
        raise QuantVerificationError(
            f"quant={qc.name!r} (backend {qc.backend!r}): {bpw:.3f} effective bits per weight, no fewer than the "
            f"reference's {ref_bits:.0f}, on {architecture(reference.model)} (weight modules "
            f"{module_classes(reference.model)}): nothing was really quantized"
        )
    verification = verify(qc, result, reference, ref_logits, ids)
    verification.update(details, quantize_seconds=round(seconds, 3))
    log.info("quant %s: %.3f bits/weight, %d bytes, %s", qc.name, bpw, nbytes, verification["module_types"])
    return QuantizedModel(
        model=result.model,
        name=qc.name,
        config=qc.resolved,
        fingerprint=quant_fingerprint(qc, reference.fingerprint),
        bits_per_weight=float(bpw),
        model_bytes=int(nbytes),
        verification=verification,
        reference_fingerprint=reference.fingerprint,
    )
