"""Token ids of a calibration corpus for the fidelity stage (the corpora themselves: quantfid.data.corpus)."""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from quantfid.data.corpus import CorpusError, documents
from quantfid.fidelity.settings import FidelityError

_CHARS_PER_TOKEN_BOUND = 8  # generous: the organism BPE averages ~3 chars/token on code


def load_corpus(name: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None) -> np.ndarray:
    """Token ids (int64) of corpus ``name`` under ``tokenizer``, at most ``max_tokens`` of them.

    Documents are tokenised one at a time without special tokens and joined with EOS (the separator the organism was
    trained with), stopping once the budget is filled: memory follows the budget and the longest document, not the
    corpus. Windows and BOS handling are the cache's business.
    """
    sep = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    n = 0
    try:
        docs = documents(name)
    except CorpusError as err:
        raise FidelityError(str(err)) from err
    for i, doc in enumerate(docs):
        if max_tokens is not None and n >= max_tokens:
            break
        if max_tokens is not None:  # a long document: tokenise no more text than the budget can use
            doc = doc[: (max_tokens - n) * _CHARS_PER_TOKEN_BOUND]
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if i and sep is not None:
            ids = [sep, *ids]
        parts.append(np.asarray(ids, dtype=np.int64))
        n += len(ids)
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return out[:max_tokens] if max_tokens is not None else out
