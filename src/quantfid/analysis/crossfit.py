"""Cross-fitting: decide the zone on one half of the prompts, measure the correlations on the other half.

Choosing the silent zone from the same per-prompt outcomes whose correlations are then measured is selection on the
outcome: a McNemar zone keeps |gained - lost| small relative to sqrt(volume) and an equivalence zone keeps quants
whose observed difference happens to be small, so within the zone direction and balance are squeezed by the
definition, whatever the metric knows. Cross-fitting removes that: for each of ``n_splits`` seeded random halvings of
every task's prompts, the zone is decided on half A and every target (score, volume, direction, balance per task and
composite) is measured on half B, then the roles swap. The fidelity variants are measured on separate calibration
corpora, so they need no split. The cross-fitted rho is the mean over the 2 x n_splits folds; beside it: the spread
over folds, the zone's size (a zone decided on half the prompts differs from the full-sample one: equivalence needs
narrower CIs, so it is smaller; McNemar has less power, so it is larger), and the noise ceiling of a half-sample
target within the fold's zone (split-half reliability of half B from its two quarters, stepped up to the half).

The CI and p printed with a cross-fitted rho are approximate: Fisher's z of the mean fold rho with Fieller's
variance 1.06 / (n - 3) at the mean zone size (the folds share quants and prompts, so their spread is not a CI).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from quantfid.analysis.cohort import COMPOSITE
from quantfid.analysis.equivalence import combine_verdicts, holm_rows, tango_ci, tango_p0, unit_verdicts
from quantfid.analysis.reliability import (
    PromptLayout,
    _halves,
    ceiling,
    half_masks,
    rowwise_spearman,
    spearman_brown,
    targets_on,
)
from quantfid.analysis.stats import adjust_pvalues, mcnemar_exact_p, nan_percentile

DEFAULT_SPLITS = 10


def zone_from_counts(method: str, cfg, counts: dict[str, np.ndarray], ref_counts: dict[str, tuple[float, float]],
                     tasks: list[str]) -> np.ndarray:  # fmt: skip
    """Zone membership (bool over quants) from one prompt subset's counts (rows of ``targets_on`` output, 1-D).

    ``method``: equivalence | mcnemar | delta | ci_overlap, with the settings of ``cfg`` (a SilentZoneConfig);
    ``ref_counts[unit] = (reference passes, n)`` on the same subset.
    """
    if method == "equivalence":  # the verdict rules of equivalence_frame, without building its frame
        units = [COMPOSITE, *tasks] if cfg.equivalence_scope == "all" else [COMPOSITE]
        g, lo_, n = (np.stack([counts[f"{k}.{u}"] for u in units], axis=1) for k in ("gained", "lost", "n"))
        lo, hi = tango_ci(g, lo_, n, cfg.level)  # (Q, U) at once
        p_adj = holm_rows(tango_p0(g, lo_))
        return combine_verdicts(unit_verdicts(lo, hi, p_adj, cfg.delta, cfg.alpha)) == "equivalent"
    if method == "mcnemar":
        lost = np.stack([counts[f"lost.{t}"] for t in tasks], axis=1)
        gained = np.stack([counts[f"gained.{t}"] for t in tasks], axis=1)
        p = mcnemar_exact_p(lost.astype(np.int64), gained.astype(np.int64))
        cols = [p.ravel()] if cfg.scope == "all" else [p[:, j] for j in range(p.shape[1])]
        rej = [_reject(c, cfg.correction, cfg.alpha) for c in cols]
        reject = rej[0].reshape(p.shape) if cfg.scope == "all" else np.stack(rej, axis=1)
        return ~reject.any(axis=1)
    differs = np.zeros(len(counts[f"n.{COMPOSITE}"]), dtype=bool)
    for t in tasks:
        acc, n = counts[f"score.{t}"], counts[f"n.{t}"]
        k_ref, n_ref = ref_counts[t]
        if method == "delta":
            differs |= np.abs(acc - k_ref / n_ref) > cfg.band
        else:
            lo, hi = proportion_confint(np.round(acc * n), n, alpha=1 - cfg.level, method="wilson")
            rlo, rhi = proportion_confint(k_ref, n_ref, alpha=1 - cfg.level, method="wilson")
            differs |= (hi < rlo) | (lo > rhi)
    return ~differs


def _reject(p: np.ndarray, correction: str, alpha: float) -> np.ndarray:
    """Rejections after the correction; Holm vectorised (statsmodels' Holm runs gc.collect() on every call: 0.1 s in
    a process holding mlflow and pandas, once per fold), the others through statsmodels."""
    if correction == "holm":
        return holm_rows(p[None, :])[0] <= alpha
    return adjust_pvalues(p, correction, alpha)[0]


def rho_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of every row of x (V, n) with every row of y (T, n), pairwise-complete."""
    out = np.full((x.shape[0], y.shape[0]), np.nan)
    if x.shape[1] < 3:
        return out
    fx, fy = np.isfinite(x).all(axis=1), np.isfinite(y).all(axis=1)
    if fx.any() and fy.any():
        out[np.ix_(fx, fy)] = np.clip(_std_ranks(x[fx]) @ _std_ranks(y[fy]).T, -1, 1)
    for j in np.flatnonzero(~fy):  # a target with gaps (balance without flips): the complete quants, batched
        ok = np.isfinite(y[j])
        if ok.sum() >= 3 and fx.any():
            out[fx, j] = np.clip(_std_ranks(x[fx][:, ok]) @ _std_ranks(y[j, ok][None])[0], -1, 1)
    for i in np.flatnonzero(~fx):  # a variant with gaps: one pair at a time
        for j in range(y.shape[0]):
            out[i, j] = rowwise_spearman(x[i][None], y[j][None])[0]
    return out


def _std_ranks(v: np.ndarray) -> np.ndarray:
    r = stats.rankdata(v, axis=1)
    r -= r.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r /= np.sqrt((r * r).sum(axis=1, keepdims=True))
    return np.where(np.isfinite(r), r, np.nan)


def crossfit(layout: PromptLayout, variant_values: np.ndarray, variant_names: list[str], target_names: list[str],
             zones: dict[str, tuple[str, object]], n_splits: int = DEFAULT_SPLITS, seed: int = 0,
             level: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """Cross-fitted rho for every (zone, variant, target).

    ``variant_values``: (V, Q) over the layout's quants; ``zones``: {zone name: (method, SilentZoneConfig)}.
    """
    s = n_splits
    a = half_masks(layout.task_of, s, seed)
    halves = np.vstack([a, ~a])  # row f: the half the zone is decided on; row (f + s) % 2s: where it is measured
    half_t = targets_on(layout, halves)
    quarters = targets_on(layout, half_masks(layout.task_of, 2 * s, seed + 1, within=halves))
    ref_counts = []
    for row in halves:
        rc = {}
        for i, t in enumerate(layout.tasks):
            sel = row & (layout.task_of == i)
            rc[t] = (float(layout.ref[sel].sum()), float(sel.sum()))
        ref_counts.append(rc)
    z = stats.norm.ppf(0.5 + level / 2)
    rows = []
    for zname, (method, cfg) in zones.items():
        rhos, rels, sizes = [], [], []
        for f in range(2 * s):
            m = (f + s) % (2 * s)
            counts = {k: v[f] for k, v in half_t.items()}
            zone = zone_from_counts(method, cfg, counts, ref_counts[f], layout.tasks)
            sizes.append(int(zone.sum()))
            y = np.stack([half_t[t][m] for t in target_names])  # (T, Q)
            rhos.append(rho_matrix(variant_values[:, zone], y[:, zone]))
            qa = {k: v[m : m + 1] for k, v in quarters.items()}
            ha = {k: v[m : m + 1] for k, v in half_t.items()}
            pairs = [_halves(qa, ha, t) for t in target_names]
            q1 = np.concatenate([a for a, _ in pairs])  # (T, Q): each target on one quarter, and on the other
            q2 = np.concatenate([b for _, b in pairs])
            rels.append(rowwise_spearman(q1[:, zone], q2[:, zone]) if zone.sum() >= 3
                        else np.full(len(target_names), np.nan))  # fmt: skip
        rho = np.stack(rhos)  # (F, V, T)
        rel_q = np.stack(rels)  # (F, T): quarter-split correlation
        n_mean = float(np.mean(sizes))
        r_half = np.full(len(target_names), np.nan)
        has = np.isfinite(rel_q).any(axis=0)
        r_half[has] = spearman_brown(np.nanmean(rel_q[:, has], axis=0))
        ok = np.isfinite(rho)
        n_ok = ok.sum(axis=0)  # (V, T)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # cells without any fold: NaN
            est = np.nanmean(rho, axis=0)
        p05, p95 = nan_percentile(rho, [5, 95])
        lo = hi = p = np.full(est.shape, np.nan)
        if n_mean > 4:
            se = np.sqrt(1.06 / (n_mean - 3))
            with np.errstate(invalid="ignore", divide="ignore"):
                zz = np.arctanh(np.clip(est, -0.999999, 0.999999))
                lo, hi = np.tanh(zz - z * se), np.tanh(zz + z * se)
                p = 2 * stats.norm.sf(np.abs(zz) / se)
        v_idx, t_idx = np.meshgrid(np.arange(len(variant_names)), np.arange(len(target_names)), indexing="ij")
        v_idx, t_idx = v_idx.ravel(), t_idx.ravel()
        rows.append(pd.DataFrame({
            "zone": zname, "variant": np.array(variant_names, dtype=object)[v_idx],
            "target": np.array(target_names, dtype=object)[t_idx], "rho_cf": est.ravel(), "ci_low": lo.ravel(),
            "ci_high": hi.ravel(), "p": p.ravel(), "rho_cf_p05": p05.ravel(), "rho_cf_p95": p95.ravel(),
            "n_folds": n_ok.ravel(), "n_zone_mean": n_mean, "n_zone_min": int(min(sizes)),
            "n_zone_max": int(max(sizes)), "reliability_half": r_half[t_idx],
            "noise_ceiling_cf": ceiling(r_half)[t_idx],
        }))  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["zone", "variant", "target", "rho_cf", "ci_low", "ci_high", "p", "rho_cf_p05",
                                     "rho_cf_p95", "n_folds", "n_zone_mean", "n_zone_min", "n_zone_max",
                                     "reliability_half", "noise_ceiling_cf"])  # fmt: skip
    out = pd.concat(rows, ignore_index=True)
    for c in ("rho_cf", "ci_low", "ci_high", "p", "rho_cf_p05", "rho_cf_p95"):  # no fold: no estimate
        out.loc[out["n_folds"] == 0, c] = np.nan
    return out
