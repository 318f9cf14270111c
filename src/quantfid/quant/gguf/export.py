"""Write the reference as a GGUF file llama.cpp loads, the way llama.cpp's ``convert_hf_to_gguf.py`` would.

Two architectures are mapped: ``llama`` (``LlamaForCausalLM``, the organism: q/k rows permuted for llama.cpp's
rotary layout, as the converter does) and ``qwen3`` (``Qwen3ForCausalLM``: NeoX rotary, no permutation, per-head
q/k RMS norms). Anything else is refused with the list of what is mapped. The vocabulary is written as llama.cpp's
``gpt2`` (byte-level BPE) tokenizer: tokens in id order, merges, special-token ids; quantfid never lets llama.cpp
tokenize (it feeds the reference tokenizer's ids), so the pre-tokenizer name only matters to people who run the file
with llama.cpp's own tools (``refact``: digits one per token + the GPT-2 split, the organism's tokenizer).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.quant.schema import QuantConfigError

EXPORT_VERSION = 1  # bump when the written file changes: it is part of every GGUF cache key

# Token types of llama.cpp's vocabulary (gguf.TokenType): normal, control (special), unused (padding rows)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


class UnsupportedArchitectureError(QuantConfigError):
    """The reference's architecture (or tokenizer) has no GGUF mapping here; the message lists what is mapped."""


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class ArchMap:
    """How one transformers architecture maps onto a llama.cpp one: its name, the per-block tensors and extras."""

    gguf_arch: str
    hf_classes: tuple[str, ...]
    permute_qk: bool
    block_tensors: tuple[tuple[str, str], ...]  # (gguf name inside blk.N., HF parameter name inside layers.N.)

    def linear_map(self, n_layers: int, tied: bool) -> dict[str, str]:
        """GGUF tensor name -> HF ``nn.Linear`` module name, for every Linear llama.cpp stores as its own tensor."""
        out = {}
        for i in range(n_layers):
            for g, h in self.block_tensors:
                if h.endswith("_proj.weight"):
                    out[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h.removesuffix('.weight')}"
        if not tied:
            out["output.weight"] = "lm_head"
        return out


_LLAMA_BLOCK = (
    ("attn_norm", "input_layernorm.weight"),
    ("attn_q", "self_attn.q_proj.weight"),
    ("attn_k", "self_attn.k_proj.weight"),
    ("attn_v", "self_attn.v_proj.weight"),
    ("attn_output", "self_attn.o_proj.weight"),
    ("ffn_norm", "post_attention_layernorm.weight"),
    ("ffn_gate", "mlp.gate_proj.weight"),
    ("ffn_up", "mlp.up_proj.weight"),
    ("ffn_down", "mlp.down_proj.weight"),
)
ARCHITECTURES: dict[str, ArchMap] = {
    "llama": ArchMap("llama", ("LlamaForCausalLM",), True, _LLAMA_BLOCK),
    "qwen3": ArchMap(
        "qwen3",
        ("Qwen3ForCausalLM",),
        False,
        (*_LLAMA_BLOCK, ("attn_q_norm", "self_attn.q_norm.weight"), ("attn_k_norm", "self_attn.k_norm.weight")),
    ),
}


def arch_of(model: PreTrainedModel) -> ArchMap:
    """The mapping for ``model`` (by its ``model_type``), or a refusal naming what is mapped."""
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(str(model_type))
    if arch is None:
        classes = ", ".join(c for a in ARCHITECTURES.values() for c in a.hf_classes)
        raise UnsupportedArchitectureError(
            f"the reference's architecture model_type={model_type!r} ({type(model).__name__}) has no GGUF export "
            f"mapping in quantfid; mapped: {sorted(ARCHITECTURES)} ({classes}). "
            "Export it with llama.cpp's convert_hf_to_gguf.py and use quant=gguf_file quant.path=<file>"
        )
    cfg = model.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise UnsupportedArchitectureError(
            f"model_type={model_type!r} with attention_bias/mlp_bias=True is not mapped (llama.cpp's {arch.gguf_arch} "
            "loader expects no Linear biases)"
        )
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError(
            f"rope_type={rope.get('rope_type')!r}: only plain rotary embeddings ('default') are mapped to GGUF here"
        )
    return arch


def rope_theta(config) -> float:
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def is_tied(model: PreTrainedModel) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# ------------------------------------------------------------------------------------------------ the vocabulary


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedArchitectureError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (tokenizers) tokenizer: its BPE merges cannot be read"
        )
    return json.loads(backend.to_str())


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name for the pre-tokenizer whose split matches ``spec`` (tokenizer.json's ``pre_tokenizer``)."""
    if not spec:
        return "default"
    kind = spec.get("type")
    if kind == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    if kind == "Sequence":
        parts = spec.get("pretokenizers") or []
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            return "refact"  # "\p{N}" then the GPT-2 split: exactly this sequence
        if kinds == ["Split", "ByteLevel"] and "\\p{N}|" in json.dumps(parts[0].get("pattern", {})):
            return "qwen2"
    return "default"


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def vocabulary(tokenizer: PreTrainedTokenizerBase, n_vocab: int) -> Vocabulary:
    """The byte-level BPE vocabulary in id order, padded to the model's ``n_vocab`` rows (as the converter does)."""
    data = _tokenizer_json(tokenizer)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedArchitectureError(
            f"tokenizer model {model.get('type')!r}: only byte-level BPE tokenizers are exported to GGUF here "
            "(llama.cpp 'gpt2' vocabulary)"
        )
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if len(by_id) != len(vocab) or max(by_id) >= n_vocab:
        raise UnsupportedArchitectureError(
            f"the tokenizer's ids (max {max(by_id)}) do not fit the model's {n_vocab} embedding rows"
        )
    special = set(tokenizer.all_special_tokens) | {
        a["content"] for a in data.get("added_tokens") or [] if a.get("special")
    }
    tokens, types = [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        else:
            tokens.append(tok)
            types.append(TOKEN_CONTROL if tok in special else TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return Vocabulary(tokens, types, merges, pre_tokenizer_name(data.get("pre_tokenizer")))


# ------------------------------------------------------------------------------------------------ the tensors


def gguf_tensors(model: PreTrainedModel, arch: ArchMap) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in the HF (out, in) layout) for every tensor llama.cpp expects, in its order."""
    cfg = model.config
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        for g, h in arch.block_tensors:
            w = sd[f"model.layers.{i}.{h}"]
            if arch.permute_qk and g == "attn_q":
                w = permute_qk(w, n_head)
            elif arch.permute_qk and g == "attn_k":
                w = permute_qk(w, n_kv)
            yield f"blk.{i}.{g}.weight", w
    yield "output_norm.weight", sd["model.norm.weight"]
    if not is_tied(model):
        yield "output.weight", sd["lm_head.weight"]


def export_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    outtype: str = "F32",
    name: str = "quantfid-reference",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``model`` + ``tokenizer`` to ``path`` (written to a temporary name, then renamed: never half a file).

    ``outtype`` F32 keeps every weight exactly; F16 stores the 2-D weights in float16 (norms stay F32, as llama.cpp's
    converter does).
    """
    import gguf  # deferred: optional dependency (the gguf extra)

    arch = arch_of(model)
    if outtype not in ("F32", "F16"):
        raise QuantConfigError(f"quant.source_type={outtype!r}: choose F32 or F16")
    cfg = model.config
    n_vocab = model.get_input_embeddings().weight.shape[0]
    voc = vocabulary(tokenizer, n_vocab)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    w.add_rope_dimension_count(int(head_dim))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(n_vocab))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "F32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(voc.pre)
    w.add_token_list(voc.tokens)
    w.add_token_types(voc.types)
    w.add_token_merges(voc.merges)
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            getattr(w, f"add_{key}_token_id")(int(value))
    bos_added = (
        tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else False
    )
    w.add_add_bos_token(bool(bos_added))
    for tname, arr in gguf_tensors(model, arch):
        if outtype == "F16" and arr.ndim == 2:
            arr = arr.astype(np.float16)
        w.add_tensor(tname, np.ascontiguousarray(arr))
        if progress:
            progress(tname)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def gguf_name_of(hf_linear: str) -> str | None:
    """The GGUF tensor name of an HF Linear module name of a mapped architecture (None when not stored alone)."""
    if hf_linear == "lm_head":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_linear)
    if not m:
        return None
    for g, h in _LLAMA_BLOCK:
        if h == f"{m.group(2)}.weight":
            return f"blk.{m.group(1)}.{g}.weight"
    return None
