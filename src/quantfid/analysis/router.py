"""Router: between two quants, on the prompts where exactly one passes, trust the one with lower per-prompt KLD.

If per-prompt KLD carried the direction of a change, this router would beat a coin (50%). Accuracy is pooled over
pairs with an exact binomial CI and a test against 1/2. Decisions of different pairs share prompts, so that CI
treats correlated decisions as independent and is optimistic; beside it comes a percentile bootstrap CI that resamples
prompts (each prompt with all its decisions, scipy.stats.bootstrap), which is the honest one, and the spread of
per-pair accuracies. Ties in KLD are left out and counted.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.stats import binomial_estimate


def router_accuracy(
    quants: list[str],
    order: list[str],
    matrices: dict[str, TaskMatrix],
    max_pairs: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    n_boot: int = 1000,
) -> dict:
    """Pairwise KLD router over the cohort (all pairs, or a seeded sample of ``max_pairs`` when there are more)."""
    qidx = np.array([order.index(q) for q in quants])
    tasks = sorted(matrices)
    passed = np.concatenate([matrices[t].passed[qidx] for t in tasks], axis=1)
    kld = np.concatenate([matrices[t].kld[qidx] for t in tasks], axis=1)
    n = len(quants)
    n_all = n * (n - 1) // 2
    if n_all <= max_pairs:
        pairs = np.array(list(itertools.combinations(range(n), 2)), dtype=np.int64).reshape(-1, 2)
    else:
        rng = np.random.default_rng(seed)
        flat = rng.choice(n_all, size=max_pairs, replace=False)
        pairs = np.array([_unrank_pair(int(k), n) for k in flat], dtype=np.int64)
    correct = np.zeros(len(pairs), dtype=np.int64)
    decided = np.zeros(len(pairs), dtype=np.int64)
    correct_by_prompt = np.zeros(passed.shape[1], dtype=np.int64)
    decided_by_prompt = np.zeros(passed.shape[1], dtype=np.int64)
    ties = 0
    for s in range(0, len(pairs), 256):  # chunks keep memory at 256 x prompts
        a, b = pairs[s : s + 256, 0], pairs[s : s + 256, 1]
        pa, pb, ka, kb = passed[a], passed[b], kld[a], kld[b]
        one = (pa != pb) & np.isfinite(ka) & np.isfinite(kb)
        tie = one & (ka == kb)
        dec = one & ~tie
        pick_a = ka < kb
        right = dec & np.where(pick_a, pa, pb)
        correct[s : s + 256] = right.sum(axis=1)
        decided[s : s + 256] = dec.sum(axis=1)
        correct_by_prompt += right.sum(axis=0)
        decided_by_prompt += dec.sum(axis=0)
        ties += int(tie.sum())
    pooled = binomial_estimate(int(correct.sum()), int(decided.sum()), level, 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pair = correct / decided
    per_pair = per_pair[decided > 0]
    return {
        "accuracy": pooled.to_dict(),
        "accuracy_prompt_bootstrap": prompt_bootstrap_ci(correct_by_prompt, decided_by_prompt, level, n_boot, seed),
        "n_pairs": len(pairs),
        "n_pairs_possible": n_all,
        "sampled": bool(n_all > max_pairs),
        "n_decisions": int(decided.sum()),
        "n_ties": ties,
        "per_pair": {
            "n": len(per_pair),
            "median": float(np.median(per_pair)) if len(per_pair) else None,
            "p10": float(np.percentile(per_pair, 10)) if len(per_pair) else None,
            "p90": float(np.percentile(per_pair, 90)) if len(per_pair) else None,
        },
    }


def prompt_bootstrap_ci(correct: np.ndarray, decided: np.ndarray, level: float, n_boot: int, seed: int) -> dict:
    """Router accuracy sum(correct) / sum(decided) with a percentile bootstrap CI over prompts: a resample draws
    prompts with replacement and keeps every decision made on them, so decisions that share a prompt stay together."""
    keep = decided > 0
    c, d = correct[keep].astype(float), decided[keep].astype(float)
    out = {"value": float(c.sum() / d.sum()) if d.sum() else float("nan"), "n_prompts": int(keep.sum())}
    out.update(ci_low=float("nan"), ci_high=float("nan"), n_boot=n_boot)
    if n_boot > 0 and keep.sum() >= 2:
        res = stats.bootstrap(
            (c, d),
            lambda c, d, axis=-1: c.sum(axis=axis) / d.sum(axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        out["ci_low"], out["ci_high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out


def _unrank_pair(k: int, n: int) -> tuple[int, int]:
    """k-th pair (i < j) in combinations order, without materialising all n(n-1)/2 pairs."""
    i = 0
    while k >= n - 1 - i:
        k -= n - 1 - i
        i += 1
    return i, i + 1 + k
