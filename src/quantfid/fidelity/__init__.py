"""Fidelity measurement: how far a quant's next-token distributions are displaced from the reference's.

Public surface (small and stable; see docs/fidelity.md):

- ``load_corpus(corpus, tokenizer, max_tokens=None) -> np.ndarray``: token ids of a corpus: ``code`` (held-out
  stdlib), ``prose`` (/usr/share/common-licenses), ``tasks`` (the organism's held-out task prompts + answers), a
  ``conf/corpus/<name>.yaml`` or a mapping ``{source: text|dir|jsonl|dataset|wikitext, ...}``
  (quantfid.fidelity.corpora).
  ``check_corpus(corpus, tokenizer=None, context=None, max_tokens=None)`` validates one before any run;
  ``corpus_sha256(corpus, max_tokens)`` is its identity (content hash).
- ``FidelitySettings``: corpus, context, scoring convention (``scored_fraction``, 0.5 = llama.cpp), top-K, budget;
  ``FidelitySettings.from_config(cfg.fidelity)`` reads a ``conf/fidelity/*.yaml`` node.
- ``ReferenceCache``: top-K log-probs + tail mass (or exact full vocabulary) of the reference over the corpus
  windows, content-addressed under ``<cache_dir>/refcache/<key>`` (``cache_dir`` defaults to ``$QUANTFID_CACHE`` or
  ``~/.cache/quantfid``). ``build_cache`` makes one, ``get_or_build`` reuses a valid local one, else fetches it from
  the tracking store, else builds it;
  ``ReferenceCache.load`` refuses a cache whose key, identity or content hash does not match.
- ``publish(cache, client)`` / ``fetch(key, client)``: share caches through MLflow (runs tagged
  ``quantfid.role=refcache``, ``quantfid.refcache_key=<key>``; ``client`` is an ``mlflow.MlflowClient``).
- ``measure(model, cache, tokenizer=None) -> FidelityResult``: one forward pass per window; ``per_token`` arrays
  (``kld``, ``kld_rev``, ``nll_ref``, ``nll_quant``, ``top1``, ``dp``, ``window``) and ``metrics`` named as in
  docs/schema.md (``fid.kld_mean``, ...). A broken quant (NaN/inf logits) gives ``ok=False`` and ``error``; bad
  configuration (tokenizer mismatch, context too long, corpus too short) raises ``FidelityError``.
- ``measure_setting(reference, model, cfg, cache_dir=None, client=None)``: the sweep's one call (cache + measure).
- ``per_prompt_kld(reference_model, model, tokenizer, prompts, reference_completions)`` -> list of
  ``(kld_prompt, kld_completion)``: mean token KLD on the prompt alone and teacher-forced on the reference's
  completion, for the benchmark stage's outcome table.
The paper's 14 fidelity variants are named in :mod:`quantfid.api.variants`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantfid.fidelity.cache import ReferenceCache
from quantfid.fidelity.cache import build as build_cache
from quantfid.fidelity.corpora import check_corpus, corpus_label, corpus_sha256, corpus_spec, load_corpus
from quantfid.fidelity.measure import FidelityResult, measure, per_prompt_kld
from quantfid.fidelity.settings import (
    CacheMismatchError,
    FidelityError,
    FidelitySettings,
    TokenizerMismatchError,
)
from quantfid.fidelity.share import fetch, get_or_build, publish


def measure_setting(
    reference: Any,
    model: Any,
    cfg: Mapping[str, Any] | FidelitySettings,
    cache_dir: str | Path | None = None,
    client: Any = None,
    publish_new: bool = False,
) -> FidelityResult:
    """Measure ``model`` against ``reference`` (a ``quantfid.models.loading.Reference``) for one setting.

    The reference cache is reused from ``<cache_dir>/refcache`` (or fetched through ``client``) and built only when
    missing.
    """
    settings = cfg if isinstance(cfg, FidelitySettings) else FidelitySettings.from_config(cfg)
    cache = get_or_build(
        reference.model,
        reference.tokenizer,
        settings,
        reference.fingerprint,
        cache_dir=cache_dir,
        client=client,
        publish_new=publish_new,
    )
    return measure(model, cache, tokenizer=reference.tokenizer, progress=True)


__all__ = [
    "CacheMismatchError",
    "FidelityError",
    "FidelityResult",
    "FidelitySettings",
    "ReferenceCache",
    "TokenizerMismatchError",
    "build_cache",
    "check_corpus",
    "corpus_label",
    "corpus_sha256",
    "corpus_spec",
    "fetch",
    "get_or_build",
    "load_corpus",
    "measure",
    "measure_setting",
    "per_prompt_kld",
    "publish",
]
