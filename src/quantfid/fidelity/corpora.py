"""Calibration corpora of the fidelity stage, all of which exist on a fresh machine without any download.

- ``code``: the organism's held-out standard-library files (never trained on), ``quantfid.organism.corpus``.
- ``prose``: the English license texts that Debian's ``base-files`` package (Essential: on every Debian/Ubuntu system
  and image) installs under ``/usr/share/common-licenses`` (GPL, LGPL, Apache, MPL, GFDL, Artistic, CC0, BSD;
  about 260 kB). It is legal English, not general prose; it is the English text that is reliably present. Another
  directory of plain-text files can be given with ``$QUANTFID_PROSE_DIR``.
- ``tasks``: the organism's held-out task prompts with their expected answers, packed like the training stream
  (EOS before each instance), in a fixed shuffled order so that any token budget covers every family.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from quantfid.fidelity.settings import CORPORA, FidelityError

PROSE_DIR = Path("/usr/share/common-licenses")
TASKS_PER_FAMILY = 200
_CHARS_PER_TOKEN_BOUND = 8  # generous: the organism BPE averages ~3 chars/token on code


def prose_files() -> list[Path]:
    """Regular files of the prose directory, symlinks resolved and deduplicated, sorted."""
    root = Path(os.environ.get("QUANTFID_PROSE_DIR", PROSE_DIR))
    if not root.is_dir():
        raise FidelityError(
            f"fidelity.corpus='prose': {root} does not exist. It ships with Debian's base-files package; on another "
            "system set QUANTFID_PROSE_DIR to a directory of English plain-text files."
        )
    files = sorted({p.resolve() for p in root.iterdir() if p.resolve().is_file()})
    if not files:
        raise FidelityError(f"fidelity.corpus='prose': {root} holds no files; set QUANTFID_PROSE_DIR")
    return files


def corpus_documents(name: str) -> Iterator[str]:
    """The corpus as documents, lazily (each file of ``code`` and ``prose``, each task instance of ``tasks``), so a
    token budget reads and tokenises only what it needs."""
    if name == "code":
        from quantfid.organism import corpus

        return (p.read_text(encoding="utf-8", errors="replace") for p in corpus.stdlib_files("heldout"))
    if name == "prose":
        return (p.read_text(encoding="utf-8", errors="replace") for p in prose_files())
    if name == "tasks":
        from quantfid.organism.evaluate import heldout_instances

        instances = heldout_instances(TASKS_PER_FAMILY)
        random.Random(0).shuffle(instances)
        return (inst.prompt + inst.answer for inst in instances)
    raise FidelityError(f"fidelity.corpus={name!r} is not known; choose one of {list(CORPORA)}")


def load_corpus(name: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None) -> np.ndarray:
    """Token ids (int64) of corpus ``name`` under ``tokenizer``, at most ``max_tokens`` of them.

    Documents are tokenised one at a time without special tokens and joined with EOS (the separator the organism was
    trained with), stopping once the budget is filled: memory follows the budget and the longest document, not the
    corpus. Windows and BOS handling are the cache's business.
    """
    sep = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    n = 0
    for i, doc in enumerate(corpus_documents(name)):
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
