"""The reference cache: the reference's next-token distributions over a corpus, computed once and reused.

One cache per (reference fingerprint, tokenizer fingerprint, corpus tokens, context, scoring convention, top-K). It
lives in ``$QUANTFID_CACHE`` (default ``~/.cache/quantfid``) under ``refcache/<key>/``:

- ``manifest.json``: the identity fields, the key, shapes and the sha256 of every array file (the content hash)
- ``tokens.npy`` (windows x context, BOS already in place), ``lengths.npy``, ``row_offsets.npy``
- ``topk_ids.npy`` / ``topk_lp.npy`` (scored tokens x K; float32 log-probs: the head), ``tail_logmass.npy`` (log of
  the mass outside the head), ``sample_ids.npy`` / ``sample_lp.npy`` (scored tokens x M tokens drawn from the tail in
  proportion to p, with their log-probs), ``target_lp.npy`` (log-prob of the true next token): the compressed form;
- or ``full_lp.npy`` (scored tokens x vocab, float32) in exact mode.

Arrays are ``.npy`` files read with ``mmap_mode='r'``, so a measurement streams window by window and its memory does
not grow with the corpus. The key is content-addressed on the inputs (it hashes the corpus tokens themselves); the
content hash is checked on every load, and a cache that does not match is refused (``load``) or rebuilt
(``get_or_build``), never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from quantfid.api.divergence import log_probs
from quantfid.api.paths import cache_dir as cache_dir_default
from quantfid.fidelity.corpora import corpus_sha256, corpus_spec, load_corpus
from quantfid.fidelity.metrics import sample_tail, tail_logmass
from quantfid.fidelity.settings import (
    CacheMismatchError,
    FidelityError,
    FidelitySettings,
    TokenizerMismatchError,
    scored_first,
)
from quantfid.models.loading import tokenizer_fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IDENTITY_FIELDS = (
    "format_version",
    "reference_fingerprint",
    "tokenizer_fingerprint",
    "corpus",
    "corpus_sha256",
    "corpus_text_sha256",
    "context",
    "scored_fraction",
    "topk",
    "tail_samples",
    "exact",
    "bos",
    "partial_last",
)
_TOPK_ARRAYS = (
    "tokens",
    "lengths",
    "row_offsets",
    "topk_ids",
    "topk_lp",
    "tail_logmass",
    "sample_ids",
    "sample_lp",
    "target_lp",
)
_EXACT_ARRAYS = ("tokens", "lengths", "row_offsets", "full_lp")


def cache_key(identity: dict[str, Any]) -> str:
    """Content address of a cache: sha256 of its identity fields (which include the corpus tokens' hash)."""
    payload = json.dumps({k: identity.get(k) for k in IDENTITY_FIELDS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def max_positions(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) if cfg is not None else None


def check_context(model: torch.nn.Module, context: int) -> None:
    """A context the model was not built for gives garbage, not an error: refuse it up front."""
    limit = max_positions(model)
    if limit is not None and context > limit:
        raise FidelityError(
            f"fidelity.context={context} is longer than the model supports (max_position_embeddings={limit}); "
            f"use fidelity.context<={limit}"
        )


def make_windows(ids: np.ndarray, settings: FidelitySettings, bos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``context`` tokens (llama.cpp's chunks), zero-padded; returns tokens, lengths."""
    ctx = settings.context
    if ids.size < ctx:
        raise FidelityError(
            f"fidelity.corpus={settings.corpus_label!r} has {ids.size} tokens, fewer than one window of "
            f"fidelity.context={ctx}; use a smaller context or a longer corpus"
        )
    ids = ids[: settings.max_tokens]
    n_full = ids.size // ctx
    rest = ids.size - n_full * ctx
    n = n_full + (1 if settings.partial_last and rest >= 2 else 0)
    tokens = np.zeros((n, ctx), dtype=np.int64)
    lengths = np.full(n, ctx, dtype=np.int64)
    tokens[:n_full] = ids[: n_full * ctx].reshape(n_full, ctx)
    if n > n_full:
        tokens[n_full, :rest] = ids[n_full * ctx :]
        lengths[n_full] = rest
    if settings.bos and bos_id is not None:
        tokens[:, 0] = bos_id
    return tokens, lengths


def row_offsets(lengths: np.ndarray, scored_fraction: float) -> np.ndarray:
    """Start of each window's scored rows in the flat per-token arrays (plus the total at the end)."""
    counts = [int(n) - 1 - scored_first(int(n), scored_fraction) for n in lengths]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass
class ReferenceCache:
    """A verified cache on disk; arrays are memory-mapped on first access."""

    path: Path
    manifest: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def exact(self) -> bool:
        return bool(self.manifest["exact"])

    @property
    def settings(self) -> FidelitySettings:
        m = self.manifest
        return FidelitySettings(
            corpus=m.get("corpus_spec") or m["corpus"],
            context=m["context"],
            scored_fraction=m["scored_fraction"],
            topk=m["topk"],
            tail_samples=m["tail_samples"],
            exact=m["exact"],
            max_tokens=m["max_tokens"],
            batch_size=m["batch_size"],
            bos=m["bos"],
            partial_last=m["partial_last"],
        )

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    @property
    def n_windows(self) -> int:
        return int(self.manifest["n_windows"])

    @property
    def n_scored(self) -> int:
        return int(self.manifest["n_scored"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def nbytes(self) -> int:
        """Bytes of the cache's array files on disk (P2)."""
        return sum((self.path / f"{n}.npy").stat().st_size for n in self.manifest["arrays"])

    def full_dump_nbytes(self) -> int:
        """Bytes of a 16-bit full-vocabulary dump of the same tokens: llama.cpp's ``--kl-divergence-base`` layout
        (2 bytes x vocab + an 8-byte scale/min header per scored token, window tokens as int32)."""
        return self.n_scored * (2 * self.vocab_size + 8) + self.n_windows * int(self.manifest["context"]) * 4

    @classmethod
    def load(cls, path: str | Path, expect: dict[str, Any] | None = None, verify: bool = True) -> ReferenceCache:
        """Open a cache directory; refuse it (``CacheMismatchError``) if its key, content or identity is wrong."""
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise CacheMismatchError(f"{path} is not a reference cache (no manifest.json); rebuild it")
        manifest = json.loads(mpath.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(
                f"{path}: cache format {manifest.get('format_version')} != {FORMAT_VERSION}; rebuild it"
            )
        if cache_key(manifest) != manifest.get("key"):
            raise CacheMismatchError(f"{path}: manifest key does not match its identity fields; rebuild it")
        for k, v in (expect or {}).items():
            if manifest.get(k) != v:
                raise CacheMismatchError(
                    f"{path}: cache {k}={manifest.get(k)!r} but {v!r} was expected; a cache for another "
                    "reference/tokenizer/corpus/setting is never used (rebuild it)"
                )
        if verify:
            for name in manifest["arrays"]:
                f = path / f"{name}.npy"
                if not f.is_file() or _sha256_file(f) != manifest["content_sha256"][name]:
                    raise CacheMismatchError(f"{path}: content hash of {name}.npy does not match; rebuild it")
        return cls(path, manifest)

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a quant whose tokenizer differs from the reference's: its token ids would mean other strings."""
        fp = tokenizer_fingerprint(tokenizer)
        if fp != self.manifest["tokenizer_fingerprint"]:
            raise TokenizerMismatchError(
                f"tokenizer fingerprint {fp} differs from the reference's {self.manifest['tokenizer_fingerprint']} "
                f"(reference cache {self.key}): reference and quant must share one tokenizer; load the quant "
                "with the reference's tokenizer"
            )


def identity_for(
    settings: FidelitySettings, reference_fingerprint: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The identity fields and key of the cache for ``settings`` (tokenises the corpus), plus its windows."""
    ids = load_corpus(settings.corpus, tokenizer, max_tokens=settings.max_tokens)
    tokens, lengths = make_windows(ids, settings, bos_id(tokenizer))
    identity: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "reference_fingerprint": reference_fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "corpus": settings.corpus_label,
        "corpus_spec": corpus_spec(settings.corpus),
        "corpus_sha256": hashlib.sha256(tokens.tobytes() + lengths.tobytes()).hexdigest(),
        "corpus_text_sha256": corpus_sha256(settings.corpus, settings.max_tokens),
        "context": settings.context,
        "scored_fraction": float(settings.scored_fraction),
        "topk": 0 if settings.is_exact else settings.topk,
        "tail_samples": 0 if settings.is_exact else settings.tail_samples,
        "exact": settings.is_exact,
        "bos": settings.bos,
        "partial_last": settings.partial_last,
    }
    identity["key"] = cache_key(identity)
    return identity, tokens, lengths


def batch_input(tokens: np.ndarray, lengths: np.ndarray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for a batch of windows."""
    ids = torch.as_tensor(np.array(tokens, dtype=np.int64))
    mask = (torch.arange(ids.shape[1])[None, :] < torch.as_tensor(np.array(lengths, dtype=np.int64))[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


def scored_rows(
    logits: torch.Tensor, tokens: torch.Tensor, lengths: np.ndarray, scored_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scored logit rows of a batch (window order) and their true next tokens."""
    rows, targets = [], []
    for b, n in enumerate(lengths):
        n = int(n)
        first = scored_first(n, scored_fraction)
        rows.append(logits[b, first : n - 1])
        targets.append(tokens[b, first + 1 : n])
    return torch.cat(rows), torch.cat(targets)


def bad_logits(rows: torch.Tensor) -> bool:
    """NaN or +inf anywhere (-inf is a legitimate masked token), or a row with no finite logit: one reduction, since a
    row's max is NaN when any entry is, +inf when any entry is, and -inf when none is finite."""
    return not bool(torch.isfinite(rows.amax(-1)).all())


@torch.no_grad()
def build(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: FidelitySettings,
    reference_fingerprint: str,
    cache_dir: str | Path | None = None,
) -> ReferenceCache:
    """Run the reference over the corpus windows once and write the cache (atomically: tmp dir, then rename)."""
    check_context(model, settings.context)
    identity, tokens, lengths = identity_for(settings, reference_fingerprint, tokenizer)
    root = Path(cache_dir or cache_dir_default()) / "refcache"
    root.mkdir(parents=True, exist_ok=True)
    final = root / identity["key"]
    offsets = row_offsets(lengths, settings.scored_fraction)
    n_rows = int(offsets[-1])
    device = next(model.parameters()).device
    exact, k, m = identity["exact"], identity["topk"], identity["tail_samples"]
    seed = int(identity["key"][:8], 16)
    id_dtype = np.uint16 if len(tokenizer) <= 65536 else np.int32
    tmp = Path(tempfile.mkdtemp(prefix=f".{identity['key']}-", dir=root))
    vocab = 0
    try:
        t0 = time.perf_counter()
        np.save(tmp / "tokens.npy", tokens.astype(id_dtype))
        np.save(tmp / "lengths.npy", lengths.astype(np.int32))
        np.save(tmp / "row_offsets.npy", offsets)
        out: dict[str, np.ndarray] = {}
        pad, bs = pad_id(tokenizer), settings.batch_size
        for start in tqdm(range(0, len(tokens), bs), desc=f"reference cache {settings.name}", unit="batch"):
            ids, mask = batch_input(tokens[start : start + bs], lengths[start : start + bs], pad)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            rows, targets = scored_rows(logits, ids, lengths[start : start + bs], settings.scored_fraction)
            if bad_logits(rows):
                raise FidelityError(
                    f"the reference produced NaN/inf logits in windows {start}..{start + bs - 1}; the reference "
                    "must be a healthy model (check model.dtype and the checkpoint)"
                )
            lp = log_probs(rows)
            if not out:
                vocab = lp.shape[-1]
                if exact:
                    out["full_lp"] = np.lib.format.open_memmap(tmp / "full_lp.npy", "w+", np.float32, (n_rows, vocab))
                else:
                    if k > vocab:
                        raise FidelityError(f"fidelity.topk={k} exceeds the vocabulary size {vocab}; lower it")
                    shapes = {
                        "topk_ids": ((n_rows, k), id_dtype),
                        "topk_lp": ((n_rows, k), np.float32),
                        "tail_logmass": ((n_rows,), np.float32),
                        "sample_ids": ((n_rows, m), id_dtype),
                        "sample_lp": ((n_rows, m), np.float32),
                        "target_lp": ((n_rows,), np.float32),
                    }
                    for name, (shape, dtype) in shapes.items():
                        out[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", dtype, shape)
            r0, r1 = int(offsets[start]), int(offsets[min(start + bs, len(tokens))])
            if exact:
                out["full_lp"][r0:r1] = lp.float().cpu().numpy()
            else:
                top_lp, top_ids = lp.topk(k, dim=-1)
                out["topk_ids"][r0:r1] = top_ids.cpu().numpy().astype(id_dtype)
                out["topk_lp"][r0:r1] = top_lp.float().cpu().numpy()
                out["tail_logmass"][r0:r1] = tail_logmass(lp, top_ids).float().cpu().numpy()
                if m:
                    sids = sample_tail(lp, top_ids, m, torch.Generator().manual_seed(seed + start))
                    out["sample_ids"][r0:r1] = sids.cpu().numpy().astype(id_dtype)
                    out["sample_lp"][r0:r1] = lp.gather(-1, sids).float().cpu().numpy()
                out["target_lp"][r0:r1] = lp.gather(-1, targets[:, None])[:, 0].float().cpu().numpy()
        for arr in out.values():
            arr.flush()
        out.clear()
        arrays = _EXACT_ARRAYS if exact else _TOPK_ARRAYS
        manifest = {
            **identity,
            "max_tokens": settings.max_tokens,
            "batch_size": settings.batch_size,
            "n_windows": len(tokens),
            "n_scored": n_rows,
            "vocab_size": int(vocab),
            "arrays": list(arrays),
            "content_sha256": {n: _sha256_file(tmp / f"{n}.npy") for n in arrays},
            "build_seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ReferenceCache.load(final, verify=False)
