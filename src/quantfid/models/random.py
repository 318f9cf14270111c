"""A small random Llama saved like any checkpoint: for tests and for trying the pipeline without the organism."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from quantfid.data.tokenizer import train_tokenizer


def save_random_llama(
    out: Path, tokenizer_texts: Sequence[str], vocab_size: int = 320, seed: int = 0, **config: object
) -> Path:
    """Train a BPE on ``tokenizer_texts``, build a seeded random ``LlamaForCausalLM`` and save both to ``out``.

    ``config`` overrides the defaults (2 layers, hidden 64, MLP 128, 2 heads, 256 positions).
    """
    tok = train_tokenizer(list(tokenizer_texts), vocab_size=vocab_size)
    settings: dict[str, object] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 256,
        **config,
    }
    settings.setdefault("num_key_value_heads", settings["num_attention_heads"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **settings,
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_random_qwen3(
    out: Path, tokenizer_texts: Sequence[str], vocab_size: int = 320, seed: int = 0, **config: object
) -> Path:
    """Like :func:`save_random_llama`, a seeded random ``Qwen3ForCausalLM`` (per-head q/k norms, NeoX rotary): the
    second architecture the GGUF export maps. Defaults: 1 layer, hidden 256, MLP 256, 2 heads of 128, untied."""
    tok = train_tokenizer(list(tokenizer_texts), vocab_size=vocab_size)
    settings: dict[str, object] = {
        "hidden_size": 256,
        "intermediate_size": 256,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 128,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        **config,
    }
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **settings,
        )
    )
    with torch.no_grad():  # random q/k norm weights (1.0 at init would not test that they are exported)
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
