"""Measurement settings of the fidelity stage and the errors it raises.

A setting is what names one reference cache and one measurement: corpus, context length, scoring convention
(``scored_fraction``: llama.cpp scores only the second half of each window, i.e. 0.5), top-K of the cache, and the
token budget. :class:`FidelitySettings` is the one home of the defaults: the sweep registers it as the Hydra schema
``fidelity/base`` that every ``conf/fidelity/*.yaml`` extends with the keys that differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from quantfid.api.variants import setting_name
from quantfid.fidelity.corpora import corpus_label, corpus_spec
from quantfid.fidelity.errors import CacheMismatchError, FidelityError, TokenizerMismatchError

__all__ = [
    "CacheMismatchError",
    "FidelityError",
    "FidelitySettings",
    "TokenizerMismatchError",
    "scored_first",
]


@dataclass(frozen=True)
class FidelitySettings:
    """One (corpus, context, scoring convention, top-K) measurement setting.

    ``scored_fraction``: the last fraction of each window whose next-token predictions are scored (0.5 = llama.cpp's
    convention: the first half only gives context). ``max_tokens``: corpus tokens used (whole windows, from the start).
    ``topk``: reference tokens stored exactly (the head); ``tail_samples``: tokens drawn from the rest of the
    reference distribution (systematic sampling), whose exact log-probs give an unbiased estimate of the tail's KL
    (0 = tail as one bucket, a lower bound). ``topk=0`` or ``exact=True`` stores full-vocabulary log-probs (checking).
    ``bos``: replace the first token of each window by BOS, as llama.cpp does. ``partial_last``: keep a last window
    shorter than ``context``.
    """

    corpus: Any = "code"  # a built-in name, a conf/corpus name, or a mapping {source: ..., ...} (fidelity.corpora)
    context: int = 256
    scored_fraction: float = 0.5
    topk: int = 8
    tail_samples: int = 22
    exact: bool = False
    max_tokens: int = 8192
    batch_size: int = 8
    bos: bool = True
    partial_last: bool = False

    def __post_init__(self) -> None:
        corpus_spec(self.corpus)  # an unknown name, source or param is an error naming it
        if not isinstance(self.context, int) or self.context < 4:
            raise FidelityError(f"fidelity.context={self.context!r} must be an integer >= 4 (tokens per window)")
        if not 0.0 < float(self.scored_fraction) <= 1.0:
            raise FidelityError(
                f"fidelity.scored_fraction={self.scored_fraction!r} must be in (0, 1]; 0.5 is llama.cpp's convention"
            )
        if not isinstance(self.topk, int) or self.topk < 0:
            raise FidelityError(f"fidelity.topk={self.topk!r} must be an integer >= 0 (0 means exact full-vocab)")
        if not isinstance(self.tail_samples, int) or self.tail_samples < 0:
            raise FidelityError(f"fidelity.tail_samples={self.tail_samples!r} must be an integer >= 0")
        if not isinstance(self.max_tokens, int) or self.max_tokens < self.context:
            raise FidelityError(
                f"fidelity.max_tokens={self.max_tokens!r} must be an integer >= fidelity.context={self.context}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise FidelityError(f"fidelity.batch_size={self.batch_size!r} must be a positive integer")

    @property
    def is_exact(self) -> bool:
        return self.exact or self.topk == 0

    @property
    def name(self) -> str:
        """``<corpus>.<context>``: the suffix of a fidelity variant's name (``kld_mean@code.256``)."""
        return setting_name(self.corpus_label, self.context)

    @property
    def corpus_label(self) -> str:
        """The corpus's short name (``code``, or a user corpus's ``name``): what variants and params show."""
        return corpus_label(self.corpus)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FidelitySettings:
        """From a Hydra/OmegaConf ``fidelity`` node; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(dict(cfg)) - known)
        if unknown:
            raise FidelityError(f"fidelity.{unknown[0]} is not a fidelity setting; the settings are {sorted(known)}")
        values = dict(cfg)
        if isinstance(values.get("corpus"), Mapping):  # OmegaConf node -> plain dict (hashable identity, JSON)
            values["corpus"] = {str(k): v for k, v in dict(values["corpus"]).items()}
        return cls(**values)


def scored_first(length: int, scored_fraction: float) -> int:
    """First logit position scored in a window of ``length`` tokens (positions ``first .. length-2`` are scored).

    For ``scored_fraction=0.5`` this is ``length // 2``, exactly llama.cpp's ``first = n_ctx/2``.
    """
    first = int(length - round(length * scored_fraction))
    return max(0, min(first, length - 2))
