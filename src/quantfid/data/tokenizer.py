"""Byte-level BPE for the organism, trained with `tokenizers` and saved as a `PreTrainedTokenizerFast`.

Digits are split one per token (arithmetic learns far better that way) and the vocabulary is small (~2k), which
keeps the embedding and the reference cache small.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train the BPE on ``texts`` and wrap it for transformers (eos doubles as bos; a separate pad token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    add_bos(tok)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=256
    )


def add_bos(tok: Tokenizer) -> None:
    """Prefix every encoding with EOS-as-BOS, the separator the organism saw before each packed instance."""
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
