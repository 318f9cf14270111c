"""Small seeded random causal LMs saved like any checkpoint (``save_pretrained``): for tests, for the architecture
matrix, and for trying the pipeline without the organism or the hub.

``save_random_model(out, arch, texts)`` builds one of :data:`ARCHITECTURES` (Llama as the organism is, GPT-2 with
transformers' ``Conv1D`` layers, Qwen3 with q/k norms and tied embeddings, Mistral with grouped-query attention),
tiny by default and with every weight matrix's input width divisible by 128 so that every backend's group sizes
apply. The weights depend only on ``seed`` and the sizes; the tokenizer is a BPE trained on ``texts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from quantfid.data.tokenizer import train_tokenizer


def _llama(vocab: int, special: dict[str, Any], s: dict[str, Any]) -> PreTrainedModel:
    s.setdefault("num_key_value_heads", s["num_attention_heads"])
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **special, **s))


def _mistral(vocab: int, special: dict[str, Any], s: dict[str, Any]) -> PreTrainedModel:
    s.setdefault("num_key_value_heads", 1)  # grouped-query attention: k/v projections narrower than q
    s.setdefault("sliding_window", None)
    return MistralForCausalLM(MistralConfig(vocab_size=vocab, **special, **s))


def _qwen3(vocab: int, special: dict[str, Any], s: dict[str, Any]) -> PreTrainedModel:
    s.setdefault("num_key_value_heads", s["num_attention_heads"])
    s.setdefault("head_dim", s["hidden_size"] // s["num_attention_heads"])
    s.setdefault("tie_word_embeddings", True)  # as the small Qwen3 checkpoints are
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, **special, **s))
    with torch.no_grad():  # random q/k norm weights (1.0 at init would not test that they are exported or used)
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return model


def _gpt2(vocab: int, special: dict[str, Any], s: dict[str, Any]) -> PreTrainedModel:
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=s.pop("hidden_size"),
        n_inner=s.pop("intermediate_size"),
        n_layer=s.pop("num_hidden_layers"),
        n_head=s.pop("num_attention_heads"),
        n_positions=s.pop("max_position_embeddings"),
        bos_token_id=special["bos_token_id"],
        eos_token_id=special["eos_token_id"],
        **s,
    )
    config.pad_token_id = special["pad_token_id"]
    return GPT2LMHeadModel(config)


#: architecture name -> builder(vocab size, special token ids, size settings)
ARCHITECTURES: dict[str, Callable[[int, dict[str, Any], dict[str, Any]], PreTrainedModel]] = {
    "llama": _llama,
    "gpt2": _gpt2,
    "qwen3": _qwen3,
    "mistral": _mistral,
}


def save_random_model(
    out: Path,
    arch: str,
    tokenizer_texts: Sequence[str],
    vocab_size: int = 320,
    seed: int = 0,
    **config: object,
) -> Path:
    """Train a BPE on ``tokenizer_texts``, build a seeded random ``arch`` model and save both to ``out``.

    ``config`` overrides the sizes (2 layers, hidden 128, MLP 256, 2 heads, 256 positions) or sets any other key of
    the architecture's config class.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not a known random architecture; choose one of {sorted(ARCHITECTURES)}")
    tok = train_tokenizer(list(tokenizer_texts), vocab_size=vocab_size)
    settings: dict[str, Any] = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 256,
        **config,
    }
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch](len(tok), special, settings)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_random_llama(
    out: Path, tokenizer_texts: Sequence[str], vocab_size: int = 320, seed: int = 0, **config: object
) -> Path:
    """A seeded random ``LlamaForCausalLM`` (the organism's architecture) and its BPE, saved to ``out``.

    ``config`` overrides the defaults (2 layers, hidden 64, MLP 128, 2 heads, 256 positions).
    """
    sizes: dict[str, object] = {"hidden_size": 64, "intermediate_size": 128, **config}
    return save_random_model(out, "llama", tokenizer_texts, vocab_size=vocab_size, seed=seed, **sizes)


def save_random_qwen3(
    out: Path, tokenizer_texts: Sequence[str], vocab_size: int = 320, seed: int = 0, **config: object
) -> Path:
    """Like :func:`save_random_llama`, a seeded random ``Qwen3ForCausalLM`` (per-head q/k norms, NeoX rotary): the
    second architecture the GGUF export maps. Defaults: 1 layer, hidden 256, MLP 256, 2 heads of 128, untied."""
    sizes: dict[str, object] = {
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_key_value_heads": 1,
        "head_dim": 128,
        "tie_word_embeddings": False,
        **config,
    }
    return save_random_model(out, "qwen3", tokenizer_texts, vocab_size=vocab_size, seed=seed, **sizes)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m quantfid.models.random --arch llama --out my-model``: a small random checkpoint to try quantfid on
    (its BPE trained on Python's own standard-library sources)."""
    import argparse
    import inspect
    import json as json_module

    parser = argparse.ArgumentParser(prog="python -m quantfid.models.random", description=main.__doc__)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama")
    parser.add_argument("--out", type=Path, required=True, help="directory to save the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = [inspect.getsource(m) for m in (json_module, argparse, inspect)]
    out = save_random_model(args.out, args.arch, texts, vocab_size=512, seed=args.seed)
    print(f"saved a random {args.arch} checkpoint to {out}")


if __name__ == "__main__":
    main()
