"""The pre-registered comparison of the direction-aware metrics with KLD inside the zone (docs/analysis.md,
"Direction-aware metrics against KLD: pre-registration"). Reads only what the cohort holds (the tracking store).

Cohort level: within the zone (quants the equivalence analysis does not call different), the cross-fitted paired
difference D = |rho(M, score)| - |rho(KLD, score)|, with a bootstrap over quants and prompts that recomputes both
correlations on the same resample. Prompt level: pooled AUROC of a per-prompt label-free metric minus that of the
per-prompt KLD, for losses among reference-passed prompts and gains among reference-failed ones, with a paired
bootstrap over prompts. Holm per family; verdict per metric: beats KLD / no evidence / worse.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from quantfid.analysis.cohort import COMPOSITE, Cohort
from quantfid.analysis.crossfit import rho_matrix
from quantfid.analysis.equivalence import combine_verdicts, holm_rows, tango_p0, tango_z, unit_verdicts
from quantfid.analysis.reliability import (
    PromptLayout,
    ceiling,
    half_masks,
    prompt_layout,
    rowwise_spearman,
    spearman_brown,
    targets_on,
)
from quantfid.analysis.stats import _clean, adjust_pvalues
from quantfid.api.schema import DIRECTION_COLUMNS
from quantfid.api.variants import PREREGISTERED_DIRECTION_VARIANTS, VOLUME_CONTROL_VARIANTS

BEATS, NO_EVIDENCE, WORSE = "beats KLD", "no evidence", "worse"
#: Per-prompt metrics of the prompt-level test and their pre-registered orientation (+1: higher = more likely to flip;
#: for the expected net flip: lower = more likely lost, higher = more likely gained).
PROMPT_METRICS = {"dir_expected_netflip": (-1.0, 1.0), "dir_confident_disagree": (1.0, 1.0)}
PROMPT_CONTROLS = {"ctl_js_refcont": (1.0, 1.0)}
PROMPT_KLD = "kld_completion"
assert set(PROMPT_METRICS) | set(PROMPT_CONTROLS) <= set(DIRECTION_COLUMNS)


def not_different(counts: dict[str, np.ndarray], tasks: list[str], cfg) -> np.ndarray:
    """The zone of the pre-registration from one prompt subset's counts: quants whose equivalence verdict (the
    rules of quantfid.analysis.equivalence, settings of ``cfg``) is equivalent or indeterminate."""
    units = [COMPOSITE, *tasks] if cfg.equivalence_scope == "all" else [COMPOSITE]
    g, lo_, n = (np.stack([counts[f"{k}.{u}"] for u in units], axis=1) for k in ("gained", "lost", "n"))
    # Tango's CI lies inside (-delta, delta) iff its score test rejects at both margins (the CI is the inversion of
    # the test, Z decreasing in d0): two evaluations instead of a bisection (tests/analysis check it equals tango_ci)
    z = stats.norm.ppf(0.5 + cfg.level / 2.0)
    with np.errstate(invalid="ignore"):
        eq = (tango_z(g, lo_, n, -cfg.delta) > z) & (tango_z(g, lo_, n, cfg.delta) < -z)
    lo = np.where(eq, 0.0, -1.0)  # only "inside the margin or not" matters to the verdict rules
    hi = np.where(eq, 0.0, 1.0)
    p_adj = holm_rows(tango_p0(g, lo_))
    return combine_verdicts(unit_verdicts(lo, hi, p_adj, cfg.delta, cfg.alpha)) != "different"


def _folds(layout: PromptLayout, values: np.ndarray, masks: np.ndarray, cfg, target: str,
           reliability: bool = True) -> tuple:  # fmt: skip
    """Per fold (zone on row f, measured on its complement): |rho| of every metric row of ``values`` with the target
    in the fold's zone; the zone sizes; the quarter-split reliability of the target in the zone."""
    halves = np.vstack([masks, ~masks])
    s = len(masks)
    t = targets_on(layout, halves)
    if reliability:
        qmask = half_masks(layout.task_of, 2 * s, 7, within=halves)
        quarters, others = targets_on(layout, qmask), targets_on(layout, halves & ~qmask)
    rhos, sizes, rels = [], [], []
    for f in range(2 * s):
        m = (f + s) % (2 * s)
        zone = not_different({k: v[f] for k, v in t.items()}, layout.tasks, cfg)
        sizes.append(int(zone.sum()))
        y = t[target][m][None, zone]
        rhos.append(np.abs(rho_matrix(values[:, zone], y)[:, 0]) if zone.sum() >= 3 else np.full(len(values), np.nan))
        if reliability and zone.sum() >= 3:
            rels.append(rowwise_spearman(quarters[target][m][None, zone], others[target][m][None, zone])[0])
        else:
            rels.append(np.nan)
    return np.array(rhos), np.array(sizes), np.array(rels)


def _resample(layout: PromptLayout, rng: np.random.Generator) -> tuple[PromptLayout, np.ndarray]:
    qi = rng.integers(0, layout.passed.shape[0], layout.passed.shape[0])
    pi = np.concatenate([rng.choice(np.flatnonzero(layout.task_of == t), int((layout.task_of == t).sum()))
                         for t in range(len(layout.tasks))])  # fmt: skip
    return PromptLayout(layout.tasks, layout.task_of[pi], layout.passed[qi][:, pi], layout.ref[pi]), qi


def _boot_p(samples: np.ndarray) -> float:
    s = samples[np.isfinite(samples)]
    if not s.size:
        return float("nan")
    return float(min(1.0, 2 * min((np.sum(s <= 0) + 1) / (s.size + 1), (np.sum(s >= 0) + 1) / (s.size + 1))))


def _verdict(d: float, p_adj: float, alpha: float) -> str:
    if np.isfinite(p_adj) and p_adj < alpha and np.isfinite(d):
        return BEATS if d > 0 else WORSE
    return NO_EVIDENCE


def cohort_comparison(layout: PromptLayout, values: np.ndarray, names: list[str], kld: np.ndarray, cfg,
                      n_splits: int = 10, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      target: str = f"score.{COMPOSITE}") -> pd.DataFrame:  # fmt: skip
    """Cross-fitted D = |rho(M, target)| - |rho(KLD, target)| in the not-different zone, per metric row of
    ``values`` (M, Q) against ``kld`` (Q,), with a paired bootstrap over quants and prompts (CI, p)."""
    allv = np.vstack([kld[None, :], values])
    masks = half_masks(layout.task_of, n_splits, seed)
    rhos, sizes, rels = _folds(layout, allv, masks, cfg, target)
    with np.errstate(invalid="ignore"):
        rho_mean = np.nanmean(rhos, axis=0) if np.isfinite(rhos).any() else np.full(len(allv), np.nan)
        d_point = np.nanmean(rhos[:, 1:] - rhos[:, :1], axis=0) if np.isfinite(rhos).any() else np.full(len(values),
                                                                                                          np.nan)
    rng = np.random.default_rng(seed + 1)
    boot = np.full((n_boot, len(values)), np.nan)
    for b in range(n_boot):
        lay, qi = _resample(layout, rng)
        m = half_masks(lay.task_of, 1, int(rng.integers(2**31)))
        r, _, _ = _folds(lay, allv[:, qi], m, cfg, target, reliability=False)
        with np.errstate(invalid="ignore"):
            boot[b] = np.nanmean(r[:, 1:] - r[:, :1], axis=0) if np.isfinite(r).any() else np.nan
    a = (1 - level) / 2
    rel = float(np.nanmean(rels)) if np.isfinite(rels).any() else float("nan")
    ceil_half = float(ceiling(spearman_brown(rel))) if np.isfinite(rel) else float("nan")
    rows = []
    for i, name in enumerate(names):
        col = boot[:, i][np.isfinite(boot[:, i])]
        lo, hi = (np.quantile(col, [a, 1 - a]) if col.size else (np.nan, np.nan))
        rows.append({"metric": name, "abs_rho_metric_cf": rho_mean[i + 1], "abs_rho_kld_cf": rho_mean[0],
                     "d": d_point[i], "ci_low": float(lo), "ci_high": float(hi), "p": _boot_p(boot[:, i]),
                     "n_boot_valid": int(col.size), "n_zone_mean": float(np.mean(sizes)),
                     "noise_ceiling_cf": ceil_half})  # fmt: skip
    return pd.DataFrame(rows)


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties 1/2) of ``scores`` for ``labels`` with cell weights ``weights`` (B, n): one AUROC
    per weight row (a bootstrap resample gives each cell its prompt's multiplicity)."""
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    wp = np.add.reduceat(w * y, starts, axis=1)  # (B, G) positive weight per tie group
    wn = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    tot_p, tot_n = wp.sum(axis=1), wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * (below + 0.5 * wn)).sum(axis=1) / (tot_p * tot_n)


def _chunked_auroc(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray, prompt_of: np.ndarray,
                   chunk: int = 64) -> np.ndarray:  # fmt: skip
    """:func:`weighted_auroc` for each row of ``counts`` (B, prompts), a cell weighing its prompt's count; in chunks of
    resamples so memory stays at chunk x cells."""
    return np.concatenate([weighted_auroc(scores, labels, counts[i : i + chunk][:, prompt_of])
                           for i in range(0, len(counts), chunk)])  # fmt: skip


def prompt_comparison(cohort: Cohort, zone: list[str], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """Paired AUROC(M) - AUROC(KLD) over (zone quant, prompt) cells: losses among reference-passed prompts, gains
    among reference-failed ones; bootstrap over prompts (whole prompts with all their quants)."""
    cols = [c for c in [*PROMPT_METRICS, *PROMPT_CONTROLS, PROMPT_KLD] if c in cohort.outcomes.columns]
    if PROMPT_KLD not in cols or len(zone) < 1:
        return pd.DataFrame()
    order = list(cohort.table.index)
    qidx = np.array([order.index(q) for q in zone])
    mats = {c: cohort.task_matrices(kld_column=c) for c in cols}
    tasks = sorted(mats[PROMPT_KLD])
    ref = np.concatenate([mats[PROMPT_KLD][t].ref_passed for t in tasks])
    passed = np.concatenate([mats[PROMPT_KLD][t].passed[qidx] for t in tasks], axis=1)
    task_of = np.concatenate([np.full(len(mats[PROMPT_KLD][t].prompt_ids), i) for i, t in enumerate(tasks)])
    val = {c: np.concatenate([mats[c][t].kld[qidx] for t in tasks], axis=1) for c in cols}
    rng = np.random.default_rng(seed + 2)
    n_p = len(ref)
    counts = np.ones((1 + n_boot, n_p))
    for b in range(n_boot):
        pick = np.concatenate([rng.choice(np.flatnonzero(task_of == t), int((task_of == t).sum()))
                               for t in range(len(tasks))])  # fmt: skip
        counts[1 + b] = np.bincount(pick, minlength=n_p)
    a = (1 - level) / 2
    rows = []
    for outcome, ref_side, k in (("loss", True, 0), ("gain", False, 1)):
        sel = np.broadcast_to(ref == ref_side, passed.shape)
        label = (passed != ref_side)[sel]  # lost (ref passed, quant failed) / gained
        prompt_of = np.broadcast_to(np.arange(n_p)[None, :], passed.shape)[sel]  # each cell's prompt
        ok_k = np.isfinite(val[PROMPT_KLD][sel])
        auc_k = None
        for name, orient in [*PROMPT_METRICS.items(), *PROMPT_CONTROLS.items()]:
            if name not in val:
                continue
            x = val[name][sel]
            ok = ok_k & np.isfinite(x)
            if label[ok].all() or not label[ok].any():
                continue
            auc_k = _chunked_auroc(val[PROMPT_KLD][sel][ok], label[ok], counts, prompt_of[ok])
            auc_m = _chunked_auroc(orient[k] * x[ok], label[ok], counts, prompt_of[ok])
            diff = auc_m - auc_k
            lo, hi = np.nanquantile(diff[1:], [a, 1 - a]) if n_boot else (np.nan, np.nan)
            rows.append({"metric": name, "outcome": outcome, "control": name in PROMPT_CONTROLS,
                         "auroc_metric": auc_m[0], "auroc_kld": auc_k[0], "d": diff[0], "ci_low": float(lo),
                         "ci_high": float(hi), "p": _boot_p(diff[1:]) if n_boot else np.nan,
                         "n_cells": int(ok.sum()), "n_events": int(label[ok].sum())})  # fmt: skip
    return pd.DataFrame(rows)


def _holm(frame: pd.DataFrame, family: pd.Series, alpha: float) -> pd.DataFrame:
    out = frame.copy()
    out["p_holm"] = np.nan
    fam = family & np.isfinite(out["p"].to_numpy(float))
    if fam.any():
        out.loc[fam, "p_holm"] = adjust_pvalues(out.loc[fam, "p"].to_numpy(float), "holm", alpha)[1]
    out["verdict"] = [
        _verdict(d, ph if f else p, alpha)
        for d, p, ph, f in zip(out["d"], out["p"], out["p_holm"], family, strict=True)
    ]
    out["in_holm_family"] = family.to_numpy(bool)
    return out


def direction_vs_kld(cohort: Cohort, matrices, zone_cfg, primary: str, *, n_splits: int = 10, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95, alpha: float = 0.05,
                     truth: pd.Series | None = None) -> dict | None:  # fmt: skip
    """The ``direction_vs_kld`` section of summary.json (None when no direction metric is in the cohort)."""
    metrics = [v for v in PREREGISTERED_DIRECTION_VARIANTS if v in cohort.variants]
    controls = [v for v in VOLUME_CONTROL_VARIANTS if v in cohort.variants]
    if not metrics or primary not in cohort.variants or matrices is None:
        return None
    quants = cohort.quants
    order = list(cohort.table.index)
    layout = prompt_layout(quants, order, matrices)
    names = [*metrics, *controls]
    values = cohort.table.loc[quants, names].to_numpy(float).T
    kld = cohort.table.loc[quants, primary].to_numpy(float)
    full_counts = targets_on(layout, np.ones((1, layout.n_prompts), dtype=bool))
    zone_mask = not_different({k: v[0] for k, v in full_counts.items()}, layout.tasks, zone_cfg)
    zone = [q for q, z in zip(quants, zone_mask, strict=True) if z]
    coh = cohort_comparison(layout, values, names, kld, zone_cfg, n_splits, n_boot, seed, level)
    coh = _holm(coh, coh["metric"].isin(metrics), alpha)
    prm = prompt_comparison(cohort, zone, n_boot, seed, level)
    if len(prm):
        prm = _holm(prm, ~prm["control"], alpha)
    not_measured = [v for v in PREREGISTERED_DIRECTION_VARIANTS if v not in cohort.variants]
    out = {
        "baseline": primary,
        "zone": {"rule": "equivalent + indeterminate (not different)", "delta": zone_cfg.delta,
                 "n_quants": len(zone), "quants": zone},
        "alpha": alpha,
        "cohort": _rows(coh),
        "prompt": _rows(prm),
        "not_measured": not_measured,
        "verdicts": {r["metric"]: r["verdict"] for r in _rows(coh) if r["in_holm_family"]},
    }
    if truth is not None:
        out["truth"] = truth_comparison(cohort, zone, names, metrics, primary, truth, n_boot, seed, level, alpha)
    return out


def truth_comparison(cohort: Cohort, zone: list[str], names: list[str], metrics: list[str], primary: str,
                     truth: pd.Series, n_boot: int, seed: int, level: float, alpha: float) -> dict:  # fmt: skip
    """D against near-noise-free scores (``truth``: quant -> score on the large fresh draw) in the main job's zone;
    bootstrap over zone quants (the truth scores' own prompt noise is small by design and not resampled)."""
    zq = [q for q in zone if q in truth.index and np.isfinite(truth[q])]
    if len(zq) < 4:
        return {"n_quants": len(zq), "note": "fewer than 4 zone quants have truth scores"}
    y = truth[zq].to_numpy(float)
    x = cohort.table.loc[zq, [primary, *names]].to_numpy(float).T
    r = np.abs(rho_matrix(x, y[None])[:, 0])
    rng = np.random.default_rng(seed + 3)
    boot = np.full((n_boot, len(names)), np.nan)
    for b in range(n_boot):
        i = rng.integers(0, len(zq), len(zq))
        rb = np.abs(rho_matrix(x[:, i], y[None, i])[:, 0])
        boot[b] = rb[1:] - rb[0]
    a = (1 - level) / 2
    rows = []
    for j, name in enumerate(names):
        col = boot[:, j][np.isfinite(boot[:, j])]
        lo, hi = np.quantile(col, [a, 1 - a]) if col.size else (np.nan, np.nan)
        rows.append({"metric": name, "abs_rho_metric": r[j + 1], "abs_rho_kld": r[0], "d": r[j + 1] - r[0],
                     "ci_low": float(lo), "ci_high": float(hi), "p": _boot_p(boot[:, j])})  # fmt: skip
    frame = _holm(pd.DataFrame(rows), pd.Series([n in metrics for n in names]), alpha)
    return {"n_quants": len(zq), "rows": _rows(frame)}


def _rows(frame: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in r.items()} for r in frame.to_dict("records")]
