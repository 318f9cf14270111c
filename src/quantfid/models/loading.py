"""Load a reference causal LM and its tokenizer the way a hub model is loaded, and fingerprint it.

Every stage goes through :func:`load_reference`: the embedded organism is a local directory that
``from_pretrained`` reads exactly as it reads ``Qwen/Qwen3-0.6B`` from the hub cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from quantfid.api.paths import organism_dir

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message names the field and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load: ``name_or_path`` is a local directory or a hub id."""

    name_or_path: str
    dtype: str = "float32"
    device: str = "cpu"
    revision: str | None = None
    trust_remote_code: bool = False


def organism_path() -> Path:
    """Directory of the shipped organism (weights, tokenizer, config) inside the installed package."""
    return organism_dir()


def resolve_name(name_or_path: str) -> str:
    """``organism`` is a shorthand for the shipped organism's directory; anything else passes through."""
    return str(organism_path()) if name_or_path in ("organism", "quantfid/organism") else name_or_path


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"model.dtype={name!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_spec(spec: ModelSpec) -> None:
    """Reject a bad dtype or device before anything is read from disk."""
    torch_dtype(spec.dtype)
    if spec.device != "cpu" and not spec.device.startswith("cuda"):
        raise ModelLoadError(f"model.device={spec.device!r} is not supported; use 'cpu' or 'cuda[:N]'")
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device={spec.device!r} but no CUDA device is available; use model.device=cpu")


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    check_spec(spec)
    name = resolve_name(spec.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as err:
        raise ModelLoadError(
            f"model.name_or_path={spec.name_or_path!r}: no tokenizer could be loaded ({err}). Give a local "
            "directory holding a transformers checkpoint, or a hub id that is in the local cache."
        ) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, **from_pretrained_kwargs) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with the spec's dtype and device, in eval mode.

    Extra keyword arguments (a ``quantization_config`` above all) go straight to ``from_pretrained``.
    """
    check_spec(spec)
    name = resolve_name(spec.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=torch_dtype(spec.dtype),
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            **from_pretrained_kwargs,
        )
    except OSError as err:
        raise ModelLoadError(
            f"model.name_or_path={spec.name_or_path!r}: no model could be loaded ({err}). Give a local directory "
            "holding a transformers checkpoint, or a hub id that is in the local cache."
        ) from err
    if "quantization_config" not in from_pretrained_kwargs and "device_map" not in from_pretrained_kwargs:
        model.to(spec.device)
    return model.eval()


def checkpoint_digest(name_or_path: str, revision: str | None = None) -> str:
    """Hash of a local checkpoint directory's files (names and contents); for a hub id, the id and revision."""
    path = Path(resolve_name(name_or_path)).expanduser()
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(json.dumps({"hub_id": name_or_path, "revision": revision}).encode())
        return h.hexdigest()[:16]
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the vocabulary, merges, normaliser and special tokens: equal iff the tokenizers encode alike."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((payload + specials).encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, dtype: str) -> str:
    """Reference fingerprint: hash of every parameter and buffer (name, shape, bytes), the tokenizer and dtype."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(dtype.encode())
    return h.hexdigest()[:16]


@dataclass
class Reference:
    """The loaded reference: model, tokenizer, the spec it came from and its fingerprint."""

    spec: ModelSpec
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str


def load_reference(spec: ModelSpec) -> Reference:
    tokenizer = load_tokenizer(spec)
    model = load_model(spec)
    return Reference(spec, model, tokenizer, model_fingerprint(model, tokenizer, spec.dtype))
