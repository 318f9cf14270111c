"""The router against its baselines: does per-prompt KLD say which quant to trust *on this prompt*?

For pairs of quants, on the prompts where exactly one of them passes (a *decision*), several rules pick a quant:

- ``kld``: the one with the lower per-prompt KLD (the paper's router);
- ``global_kld``: always the one with the lower median per-prompt KLD over all prompts (the globally better quant by
  KLD; it never looks at the prompt). If the KLD router barely beats it, the router measures which quant is better
  overall, not which answer is right;
- ``demeaned``: the lower of (log per-prompt KLD - the quant's median log KLD): the prompt's KLD relative to the
  quant's usual level, so only per-prompt information is left;
- ``global_score``: always the quant with the higher benchmark accuracy (in-sample: an upper reference for any rule
  that picks one quant per pair, not a fair competitor).

Every rule is scored on the same decisions (a tie in a rule's criterion counts 1/2), overall, split by the
reference's outcome on the prompt, and on the pairs whose two quants both lie in a zone. Decisions of different pairs
share prompts, so accuracy, its CI and its p-value (against 1/2; for differences between rules, against 0) all come
from one bootstrap over prompts (each resample draws prompts with replacement and keeps all their decisions): the
percentile CI, and p = 2 min(P*(acc <= 1/2), P*(acc >= 1/2)) with the +1 correction ((1 + count) / (1 + B)).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.controls import bootstrap_weights
from quantfid.analysis.failure import prompt_grid
from quantfid.analysis.router import _unrank_pair

RULES = ("kld", "global_kld", "demeaned", "global_score")


def router_baselines(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix],
                     zones: dict[str, list[str]] | None = None, max_pairs: int = 2000, seed: int = 0,
                     level: float = 0.95, n_boot: int = 1000) -> dict:  # fmt: skip
    """Accuracy of every rule (see the module docstring) with prompt-bootstrap CIs and p-values."""
    passed, ref, kld, finite, logk = prompt_grid(quants, order, matrices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(kld, axis=1)
        centred = logk - np.nanmedian(logk, axis=1, keepdims=True)
    acc = passed.mean(axis=1)
    n = len(quants)
    n_all = n * (n - 1) // 2
    if n_all <= max_pairs:  # the same pairs as router_accuracy (same seed)
        pairs = np.array(list(itertools.combinations(range(n), 2)), dtype=np.int64).reshape(-1, 2)
    else:
        flat = np.random.default_rng(seed).choice(n_all, size=max_pairs, replace=False)
        pairs = np.array([_unrank_pair(int(k), n) for k in flat], dtype=np.int64)
    groups = {"all": np.ones(len(pairs), bool)}
    pos = {q: i for i, q in enumerate(quants)}
    for zname, members in (zones or {}).items():
        inz = np.zeros(n, bool)
        inz[[pos[q] for q in members if q in pos]] = True
        groups[f"zone:{zname}"] = inz[pairs[:, 0]] & inz[pairs[:, 1]]
    p = passed.shape[1]
    correct = {g: {r: np.zeros(p) for r in RULES} for g in groups}
    decided = {g: np.zeros(p) for g in groups}
    for s in range(0, len(pairs), 256):
        a, b = pairs[s : s + 256, 0], pairs[s : s + 256, 1]
        pa, pb = passed[a], passed[b]
        dec = (pa != pb) & finite[a] & finite[b]
        scores = {
            "kld": _pick(kld[a], kld[b], pa, pb),
            "global_kld": _pick(_rows(med[a], pa.shape), _rows(med[b], pa.shape), pa, pb),
            "demeaned": _pick(centred[a], centred[b], pa, pb),
            "global_score": _pick(-_rows(acc[a], pa.shape), -_rows(acc[b], pa.shape), pa, pb),
        }
        for g, sel in groups.items():
            gs = sel[s : s + 256][:, None]
            d = dec & gs
            decided[g] += d.sum(axis=0)
            for r in RULES:
                correct[g][r] += np.where(d, scores[r], 0.0).sum(axis=0)
    w = bootstrap_weights(p, n_boot, seed) if n_boot > 0 else None
    out: dict = {"rules": list(RULES), "n_pairs": len(pairs), "n_pairs_possible": n_all,
                 "sampled": bool(n_all > max_pairs), "tie_rule": "a tie in a rule's criterion counts 1/2",
                 "n_boot": n_boot, "groups": {}}  # fmt: skip
    subsets = {"all prompts": np.ones(p, bool), "reference passed": ref, "reference failed": ~ref}
    for g in groups:
        gout = {"n_pairs": int(groups[g].sum())}
        for label, m in subsets.items():
            d = decided[g] * m
            entry = {"n_decisions": int(d.sum()), "n_prompts": int((d > 0).sum())}
            for r in RULES:
                entry[r] = _boot(correct[g][r] * m, d, w, level, 0.5)
            for r in ("kld", "demeaned"):
                entry[f"{r}_minus_global_kld"] = _boot((correct[g][r] - correct[g]["global_kld"]) * m, d, w, level,
                                                       0.0)  # fmt: skip
            gout[label] = entry
        out["groups"][g] = gout
    return out


def _rows(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One value per pair, repeated over the prompts."""
    return np.broadcast_to(v[:, None], shape)


def _pick(ka: np.ndarray, kb: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """1 if the rule (lower criterion wins) picks the quant that passed, 0 if not, 1/2 on a tie."""
    right_a = np.where(pa, 1.0, 0.0)
    right_b = np.where(pb, 1.0, 0.0)
    return np.where(ka < kb, right_a, np.where(kb < ka, right_b, 0.5))


def _boot(c: np.ndarray, d: np.ndarray, w: np.ndarray | None, level: float, null: float) -> dict:
    """sum(c)/sum(d) with a prompt-bootstrap percentile CI and two-sided bootstrap p against ``null``."""
    tot = float(d.sum())
    out = {"value": float(c.sum() / tot) if tot else None, "ci_low": None, "ci_high": None, "p": None}
    if w is None or tot == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = (w @ c) / (w @ d)
    stat = stat[np.isfinite(stat)]
    if not len(stat):
        return out
    a = (1 - level) / 2
    out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(stat, [100 * a, 100 * (1 - a)]))
    b = len(stat)
    lo_side = (1 + int((stat <= null).sum())) / (1 + b)
    hi_side = (1 + int((stat >= null).sum())) / (1 + b)
    out["p"] = float(min(1.0, 2 * min(lo_side, hi_side)))
    return out
