"""Router: between two quants, on the prompts where exactly one passes, trust the one with lower per-prompt KLD.

If per-prompt KLD carried the direction of a change, this router would beat a coin (50%). Accuracy is pooled over
pairs with an exact binomial CI and a test against 1/2; decisions of different pairs share prompts, so that CI is
optimistic, and the spread of per-pair accuracies is reported beside it. Ties in KLD are left out and counted.
"""

from __future__ import annotations

import itertools

import numpy as np

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.stats import binomial_estimate


def router_accuracy(
    quants: list[str],
    order: list[str],
    matrices: dict[str, TaskMatrix],
    max_pairs: int = 2000,
    seed: int = 0,
    level: float = 0.95,
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
        ties += int(tie.sum())
    pooled = binomial_estimate(int(correct.sum()), int(decided.sum()), level, 0.5)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pair = correct / decided
    per_pair = per_pair[decided > 0]
    return {
        "accuracy": pooled.to_dict(),
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


def _unrank_pair(k: int, n: int) -> tuple[int, int]:
    """k-th pair (i < j) in combinations order, without materialising all n(n-1)/2 pairs."""
    i = 0
    while k >= n - 1 - i:
        k -= n - 1 - i
        i += 1
    return i, i + 1 + k
