"""How reliable is the benchmark's own ranking of the quants? Split-half reliability and the noise ceiling.

The prompts of every task are split at random into two halves (stratified: half of each task's prompts on each side;
``n_splits`` seeded splits). Each quant's targets (accuracy per task and composite, flip volume, direction, balance)
are computed on each half. Within a set of quants (the full cohort, a zone), the **split-half reliability** of a target
is the Spearman correlation of its two half-sample rankings averaged over the splits, stepped up to the full prompt
set with the **Spearman-Brown** formula r_full = 2 r / (1 + r).

The **noise ceiling** is sqrt(r_full): the correlation a perfect metric (one that ranks the quants exactly by their
true target) would be expected to show with the observed, noisy target (Spearman's correction for attenuation). A
fidelity metric's |rho| near the ceiling means "as good as any metric could look on this benchmark"; a ceiling near
0 means the benchmark cannot rank these quants at all, so rho ~ 0 says nothing about the metric ("the benchmark is
too small to tell", not "the metric fails"). For a correlation measured on half the prompts (cross-fitting) the
ceiling is sqrt(r_half), with r_half estimated from quarters of the prompts.

Spearman-Brown is exact for Pearson correlations of parallel halves and a close approximation for rank correlations;
a negative split-half correlation (no reliable ranking at all) gives a ceiling of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from quantfid.analysis.cohort import COMPOSITE, TaskMatrix

KINDS = ("score", "volume", "direction", "balance")


@dataclass
class PromptLayout:
    """Per-prompt outcomes of the cohort's quants over the concatenated prompts of the sorted tasks."""

    tasks: list[str]
    task_of: np.ndarray  # (P,) index into tasks
    passed: np.ndarray  # (Q, P) bool, cohort quants (reference excluded) in the given order
    ref: np.ndarray  # (P,) bool

    @property
    def n_prompts(self) -> int:
        return len(self.ref)


def prompt_layout(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix]) -> PromptLayout:
    qidx = np.array([order.index(q) for q in quants])
    tasks = sorted(matrices)
    passed = np.concatenate([matrices[t].passed[qidx] for t in tasks], axis=1)
    ref = np.concatenate([matrices[t].ref_passed for t in tasks])
    task_of = np.concatenate([np.full(len(matrices[t].prompt_ids), i) for i, t in enumerate(tasks)])
    return PromptLayout(tasks, task_of, passed, ref)


def half_masks(task_of: np.ndarray, n_splits: int, seed: int, within: np.ndarray | None = None) -> np.ndarray:
    """(n_splits, P) bool: a random half of each task's prompts (floor), seeded; ``within`` (same shape, optional)
    splits only the prompts already selected by each row of it (quarters from halves)."""
    rng = np.random.default_rng(seed)
    p = len(task_of)
    out = np.zeros((n_splits, p), dtype=bool)
    for s in range(n_splits):
        for t in np.unique(task_of):
            idx = np.flatnonzero((task_of == t) & (within[s] if within is not None else True))
            pick = rng.permutation(idx)[: len(idx) // 2]
            out[s, pick] = True
    return out


def targets_on(layout: PromptLayout, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Targets of every quant on each prompt subset (rows of ``masks``): {name: (K, Q) array}.

    Names as in the correlation table: ``score.<task>`` (accuracy), ``volume.<task>``, ``direction.<task>``,
    ``balance.<task>`` ((gained - lost) / volume, 0 at volume 0), and the same for ``composite``.
    """
    w = masks.T.astype(np.float32)  # (P, K)
    passed = layout.passed.astype(np.float32)
    lost = (layout.ref[None, :] & ~layout.passed).astype(np.float32)
    gained = (~layout.ref[None, :] & layout.passed).astype(np.float32)
    out: dict[str, np.ndarray] = {}
    tot = {k: np.zeros((masks.shape[0], layout.passed.shape[0])) for k in ("p", "l", "g")}
    tot_n = np.zeros(masks.shape[0])
    for i, t in enumerate(layout.tasks):
        sel = layout.task_of == i
        n = w[sel].sum(axis=0).astype(float)  # (K,)
        ps = (passed[:, sel] @ w[sel]).T.astype(float)  # (K, Q)
        ls = (lost[:, sel] @ w[sel]).T.astype(float)
        gs = (gained[:, sel] @ w[sel]).T.astype(float)
        _fill(out, t, ps, ls, gs, n)
        tot["p"] += ps
        tot["l"] += ls
        tot["g"] += gs
        tot_n += n
    _fill(out, COMPOSITE, tot["p"], tot["l"], tot["g"], tot_n)
    return out


def _fill(out: dict, unit: str, ps, ls, gs, n) -> None:
    with np.errstate(invalid="ignore", divide="ignore"):
        out[f"score.{unit}"] = ps / n[:, None]
        vol = ls + gs
        out[f"volume.{unit}"] = vol
        out[f"direction.{unit}"] = gs - ls
        out[f"balance.{unit}"] = np.where(vol > 0, (gs - ls) / np.where(vol > 0, vol, 1.0), 0.0)
        out[f"lost.{unit}"] = ls
        out[f"gained.{unit}"] = gs
        out[f"n.{unit}"] = np.broadcast_to(n[:, None], ps.shape)


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (x[i], y[i]) over the finite pairs; NaN with < 3 pairs or a constant row."""
    x, y = np.atleast_2d(np.asarray(x, float)), np.atleast_2d(np.asarray(y, float))
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.all():
        return _pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))
    out = np.full(x.shape[0], np.nan)
    for i in range(x.shape[0]):
        m = ok[i]
        if m.sum() >= 3:
            out[i] = _pearson_rows(stats.rankdata(x[i, m])[None], stats.rankdata(y[i, m])[None])[0]
    return out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(a.shape[1] >= 3, r, np.nan)


def spearman_brown(r, factor: float = 2.0):
    """Reliability of a test ``factor`` times as long: k r / (1 + (k - 1) r)."""
    r = np.asarray(r, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return factor * r / (1.0 + (factor - 1.0) * r)


def ceiling(reliability) -> np.ndarray | float:
    """Noise ceiling sqrt(max(reliability, 0)) (NaN stays NaN)."""
    r = np.asarray(reliability, float)
    out = np.sqrt(np.clip(r, 0.0, None))
    return float(out) if out.ndim == 0 else out


def split_half_reliability(half_a: dict[str, np.ndarray], full: dict[str, np.ndarray], members: np.ndarray,
                           names: list[str]) -> dict[str, dict]:  # fmt: skip
    """Reliability of each target's ranking among ``members`` (bool over quants): the halves are rows of
    ``half_a`` and the complementary halves ``full - half_a`` (counts; scores recomputed)."""
    out = {}
    for name in names:
        a, b = _halves(half_a, full, name)
        r = rowwise_spearman(a[:, members], b[:, members]) if members.sum() >= 3 else np.full(a.shape[0], np.nan)
        r_half = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
        r_full = float(spearman_brown(r_half))
        out[name] = {
            "n_quants": int(members.sum()),
            "n_splits": int(np.isfinite(r).sum()),
            "split_half_r": _f(r_half),
            "split_half_r_p05": _f(np.nanpercentile(r, 5)) if np.isfinite(r).any() else None,
            "split_half_r_p95": _f(np.nanpercentile(r, 95)) if np.isfinite(r).any() else None,
            "reliability": _f(r_full),
            "noise_ceiling": _f(ceiling(r_full)),
            "noise_ceiling_half": _f(ceiling(r_half)),
        }
    return out


def _halves(half_a: dict[str, np.ndarray], full: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """The target on half A (rows) and on its complement, derived from counts."""
    kind, unit = name.split(".", 1)
    la, ga, na = half_a[f"lost.{unit}"], half_a[f"gained.{unit}"], half_a[f"n.{unit}"]
    lb, gb, nb = full[f"lost.{unit}"] - la, full[f"gained.{unit}"] - ga, full[f"n.{unit}"] - na
    if kind == "score":
        pa = half_a[name] * na
        pb = full[name] * full[f"n.{unit}"] - pa
        with np.errstate(invalid="ignore", divide="ignore"):
            return pa / na, pb / nb
    return _kind(kind, la, ga), _kind(kind, lb, gb)


def _kind(kind: str, lost: np.ndarray, gained: np.ndarray) -> np.ndarray:
    vol = lost + gained
    if kind == "volume":
        return vol
    if kind == "direction":
        return gained - lost
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(vol > 0, (gained - lost) / np.where(vol > 0, vol, 1.0), 0.0)


def _f(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
