"""Measure a quant against a reference cache: one forward pass per window, every statistic from the same arrays."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from quantfid.api.divergence import log_probs, token_kld
from quantfid.api.schema import DIRECTION_COLUMNS
from quantfid.fidelity.cache import (
    ReferenceCache,
    bad_logits,
    batch_input,
    check_context,
    pad_id,
    scored_rows,
)
from quantfid.fidelity.direction import labelfree_from_rows
from quantfid.fidelity.metrics import PER_TOKEN_FIELDS, aggregate, per_token_exact, per_token_topk
from quantfid.fidelity.settings import FidelityError


@dataclass
class FidelityResult:
    """One measurement. ``ok=False`` means the quant is broken (e.g. NaN logits): ``error`` says why and
    ``metrics`` is empty; the sweep records it as a failed run instead of crashing."""

    ok: bool
    cache_key: str
    corpus: str
    context: int
    scored_fraction: float
    topk: int
    tail_samples: int = 0
    per_token: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0



def _cache_rows(cache: ReferenceCache, r0: int, r1: int, device: torch.device) -> dict[str, torch.Tensor]:
    if cache.exact:
        return {"lp": torch.from_numpy(np.array(cache.array("full_lp")[r0:r1])).to(device).double()}
    return {
        "ref_ids": torch.from_numpy(cache.array("topk_ids")[r0:r1].astype(np.int64)).to(device),
        "ref_lp": torch.from_numpy(np.array(cache.array("topk_lp")[r0:r1])).to(device).double(),
        "ref_tail": torch.from_numpy(np.array(cache.array("tail_logmass")[r0:r1])).to(device).double(),
        "sample_ids": torch.from_numpy(cache.array("sample_ids")[r0:r1].astype(np.int64)).to(device),
        "sample_lp": torch.from_numpy(np.array(cache.array("sample_lp")[r0:r1])).to(device).double(),
        "ref_target_lp": torch.from_numpy(np.array(cache.array("target_lp")[r0:r1])).to(device).double(),
    }


@torch.no_grad()
def measure(
    model: torch.nn.Module,
    cache: ReferenceCache,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> FidelityResult:
    """Per-token arrays and ``fid.*`` metrics of ``model`` (any causal LM returning ``.logits``) against ``cache``.

    Configuration errors (tokenizer differs from the reference's, context too long, vocabulary mismatch) raise
    ``FidelityError``; a broken quant (NaN/+inf logits) returns ``ok=False`` with a message. ``batch_size`` defaults
    to the cache's, which makes an unchanged reference reproduce its cache bit for bit (KLD exactly 0).
    """
    m = cache.manifest
    result = FidelityResult(
        ok=False,
        cache_key=cache.key,
        corpus=m["corpus"],
        context=int(m["context"]),
        scored_fraction=float(m["scored_fraction"]),
        topk=int(m["topk"]),
        tail_samples=int(m["tail_samples"]),
    )
    if tokenizer is not None:
        cache.check_tokenizer(tokenizer)
    check_context(model, result.context)
    device = next(model.parameters()).device
    tokens, lengths, offsets = cache.array("tokens"), cache.array("lengths"), cache.array("row_offsets")
    bs = batch_size or int(m["batch_size"])
    pad = pad_id(tokenizer) if tokenizer is not None else 0
    # preallocated outputs filled batch by batch: no per-batch arrays kept between the large transient buffers of
    # each forward pass (which fragments the heap and makes peak memory grow with the corpus)
    n_rows = int(offsets[cache.n_windows])
    per_token = {k: np.empty(n_rows, dtype=bool if k == "top1" else np.float64) for k in PER_TOKEN_FIELDS}
    t0 = time.perf_counter()
    for start in tqdm(
        range(0, cache.n_windows, bs),
        desc=f"fidelity {result.corpus}.{result.context}",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        stop = min(start + bs, cache.n_windows)
        lens = np.asarray(lengths[start:stop])
        ids, mask = batch_input(tokens[start:stop], lens, pad)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        if logits.shape[-1] != cache.vocab_size:
            raise FidelityError(
                f"the model's logits have {logits.shape[-1]} entries but the reference's have {cache.vocab_size}: "
                "reference and quant must share one vocabulary"
            )
        rows, targets = scored_rows(logits, ids, lens, result.scored_fraction)
        if bad_logits(rows):
            result.error = (
                f"quant produced NaN/inf logits in windows {start}..{stop - 1} of {result.corpus}.{result.context}: "
                "the quantized model is numerically broken (failed measurement)"
            )
            result.seconds = time.perf_counter() - t0
            return result
        lq = log_probs(rows)
        r0, r1 = int(offsets[start]), int(offsets[stop])
        ref = _cache_rows(cache, r0, r1, device)
        per = per_token_exact(lq, targets, ref["lp"]) if cache.exact else per_token_topk(lq, targets, **ref)
        for k, v in per.items():
            per_token[k][r0:r1] = v.cpu().numpy()
    per_token["window"] = np.repeat(np.arange(cache.n_windows), np.diff(np.asarray(offsets))).astype(np.int32)
    result.per_token = per_token
    bad = [k for k in ("kld", "kld_rev", "nll_quant") if not np.all(np.isfinite(per_token[k]))]
    if "kld" in bad or "nll_quant" in bad:
        result.error = (
            f"quant assigns zero probability (-inf log-prob) where the reference does not ({', '.join(bad)} "
            f"infinite on {result.corpus}.{result.context}): failed measurement"
        )
        result.seconds = time.perf_counter() - t0
        return result
    result.metrics = aggregate(per_token, per_token["window"])
    result.ok = True
    result.seconds = time.perf_counter() - t0
    return result


@torch.no_grad()
def _forward_logprobs(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad: int, device: torch.device
) -> list[torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return [logits[row, : len(s)] for row, s in enumerate(seqs)]


@torch.no_grad()
def per_prompt_fidelity(
    reference_model: torch.nn.Module,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reference_completions: Sequence[str],
    batch_size: int = 32,
    confident: float | None = None,
) -> dict[str, np.ndarray]:
    """Per prompt, from one forward pass of each model over prompt + the reference's completion: ``kld_prompt`` and
    ``kld_completion`` (see :func:`per_prompt_kld`) and, with ``confident`` set, the label-free direction columns of
    quantfid.api.schema.DIRECTION_COLUMNS on the completion's positions (quantfid.fidelity.direction). NaN where
    the completion is empty or the logits are not finite."""
    if len(prompts) != len(reference_completions):
        raise FidelityError(
            f"per_prompt_kld: {len(prompts)} prompts but {len(reference_completions)} reference completions"
        )
    p_ids = tokenizer(list(prompts))["input_ids"]
    c_ids = tokenizer(list(reference_completions), add_special_tokens=False)["input_ids"]
    pad = pad_id(tokenizer)
    dev_r = next(reference_model.parameters()).device
    dev_q = next(model.parameters()).device
    names = ["kld_prompt", "kld_completion", *(DIRECTION_COLUMNS if confident is not None else ())]
    out = {k: np.full(len(p_ids), math.nan) for k in names}
    for start in tqdm(range(0, len(p_ids), batch_size), desc="per-prompt kld", unit="batch", leave=False):
        seqs = [
            p + c for p, c in zip(p_ids[start : start + batch_size], c_ids[start : start + batch_size], strict=True)
        ]
        ref_logits = _forward_logprobs(reference_model, seqs, pad, dev_r)
        q_logits = _forward_logprobs(model, seqs, pad, dev_q)
        for j, (lr, lqq) in enumerate(zip(ref_logits, q_logits, strict=True)):
            i = start + j
            n_p, n_c = len(p_ids[i]), len(c_ids[i])
            if bad_logits(lqq) or bad_logits(lr):
                continue
            kld = token_kld(lr, lqq)
            out["kld_prompt"][i] = float(kld[:n_p].mean())
            if not n_c:
                continue
            out["kld_completion"][i] = float(kld[n_p - 1 : n_p - 1 + n_c].mean())
            if confident is not None:
                rows = slice(n_p - 1, n_p - 1 + n_c)
                lp, lq = log_probs(lr[rows]).cpu(), log_probs(lqq[rows]).cpu()
                for k, v in zip(DIRECTION_COLUMNS, labelfree_from_rows(lp, lq, c_ids[i], confident), strict=True):
                    out[k][i] = v
    return out


def per_prompt_kld(
    reference_model: torch.nn.Module,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reference_completions: Sequence[str],
    batch_size: int = 32,
) -> list[tuple[float, float]]:
    """Per prompt: (mean token KL(ref||quant) over the prompt's positions, mean teacher-forced on the completion).

    The sequence is the prompt (with the tokenizer's special tokens, as the benchmark feeds it) followed by the
    reference's own completion. ``kld_prompt`` averages the prompt's positions, i.e. the prompt alone (causal: later
    tokens cannot change them), including the last one, which predicts the first completion token.
    ``kld_completion`` averages the positions that predict each completion token. Full vocabulary, no cache.
    An empty completion gives NaN there; NaN/inf logits give NaN for that prompt.
    """
    cols = per_prompt_fidelity(reference_model, model, tokenizer, prompts, reference_completions, batch_size)
    return list(zip(cols["kld_prompt"].tolist(), cols["kld_completion"].tolist(), strict=True))
