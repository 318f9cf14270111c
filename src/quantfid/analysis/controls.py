"""Controls for per-prompt failure prediction: how much of "high KLD on failed prompts" is prediction, how much is
prompt difficulty and quant damage?

The paper's statistic, the failed/passed geometric-mean ratio of per-prompt KLD, compares different prompts: hard
prompts (which every model fails more often) can carry higher KLD for reasons of their own. Beside it:

- **difficulty control** (``gm_ratio_ref_difficulty``): the same ratio between prompts the *reference* fails and
  passes, which ignores the quant's outcome altogether: what difficulty alone produces;
- **lost vs kept** among the prompts the reference passed (``gm_ratio_lost``, also in ``failure_prediction``) and
  **gained vs stayed-failed** among the prompts it failed (``gm_ratio_gained``): if KLD measured *change*, gained
  prompts would carry higher KLD than stayed-failed ones (ratio > 1); if it measured *failure*, lower (< 1);
- **within-prompt comparison**: each prompt compared with itself across quants, so difficulty cancels:
  the within-prompt concordance (for every prompt the reference passed, the probability that a quant which lost it
  has a higher per-prompt KLD than one which kept it, pooled over prompts: a stratified Mann-Whitney AUROC) with a
  prompt-bootstrap CI and the p-value of the within-prompt permutation test (normal approximation of the stratified
  Mann-Whitney statistic, ties corrected); once with the raw log KLD (difficulty removed, quant damage still in: a
  more damaged quant has higher KLD everywhere and loses more) and once with each quant's log KLD centred on its own
  median (damage removed too: **this one measures per-prompt prediction**); and a conditional logistic regression of
  loss on centred log KLD with prompt strata (statsmodels ``ConditionalLogit``; odds ratio per doubling of KLD),
  on a seeded subsample of quants when the data exceed ``max_clogit_cells``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.failure import prompt_grid
from quantfid.analysis.stats import auroc_rows, mean_t_ci, resample_counts, welch_log_ratio_rows

DEFAULT_MAX_CLOGIT_CELLS = 3000  # statsmodels recurses over each stratum: seconds above this


def stratified_mann_whitney(values: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """Per stratum (row): U of ``pos`` vs ``neg`` (ties 1/2), its permutation mean and variance (tie-corrected)."""
    member = pos | neg
    v = np.where(member, values, np.nan)
    r = stats.rankdata(v, axis=1, nan_policy="omit")
    n1 = pos.sum(axis=1).astype(float)
    n0 = neg.sum(axis=1).astype(float)
    n = n1 + n0
    u = np.where(pos, r, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2
    tie = tie_term(np.where(member, r, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        var = n1 * n0 / 12 * ((n + 1) - tie / (n * (n - 1)))
    ok = (n1 > 0) & (n0 > 0)
    return {"u": np.where(ok, u, 0.0), "pairs": np.where(ok, n1 * n0, 0.0), "mean": np.where(ok, n1 * n0 / 2, 0.0),
            "var": np.where(ok, var, 0.0)}  # fmt: skip


def tie_term(ranks: np.ndarray) -> np.ndarray:
    """Per row of mid-ranks (NaN = not a member): sum over groups of tied ranks of (t^3 - t), the tie correction of
    rank statistics. Mid-ranks are multiples of 1/2, so (row, 2 x rank) is an exact integer key."""
    rows, cols = np.nonzero(np.isfinite(ranks))
    if not len(rows):
        return np.zeros(ranks.shape[0])
    width = int(2 * np.nanmax(ranks)) + 2
    keys = rows.astype(np.int64) * width + np.rint(2 * ranks[rows, cols]).astype(np.int64)
    uniq, cnt = np.unique(keys, return_counts=True)
    c = cnt.astype(float)
    return np.bincount(uniq // width, weights=c**3 - c, minlength=ranks.shape[0])


def within_prompt_concordance(values: np.ndarray, pos: np.ndarray, neg: np.ndarray, level: float, n_boot: int,
                              seed: int) -> dict:  # fmt: skip
    """Pooled within-stratum AUROC sum(U) / sum(n1 n0) over strata (rows), prompt-bootstrap CI, permutation p."""
    mw = stratified_mann_whitney(values, pos, neg)
    keep = mw["pairs"] > 0
    u, pairs = mw["u"][keep], mw["pairs"][keep]
    out = {"value": None, "ci_low": None, "ci_high": None, "p_permutation": None, "n_prompts": int(keep.sum()),
           "n_pairs": int(pairs.sum())}  # fmt: skip
    if not keep.any():
        return out
    out["value"] = float(u.sum() / pairs.sum())
    sd = np.sqrt(mw["var"][keep].sum())
    if sd > 0:
        out["p_permutation"] = float(2 * stats.norm.sf(abs(u.sum() - mw["mean"][keep].sum()) / sd))
    if n_boot > 0 and keep.sum() >= 2:
        w = bootstrap_weights(int(keep.sum()), n_boot, seed)
        acc = (w @ u) / (w @ pairs)
        a = (1 - level) / 2
        out["ci_low"], out["ci_high"] = (float(x) for x in np.nanpercentile(acc, [100 * a, 100 * (1 - a)]))
    return out


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multinomial counts: how often each unit (prompt) is drawn in each resample."""
    return resample_counts(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)), n)


def conditional_logit(y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> dict:
    """statsmodels ConditionalLogit of y on one covariate x with strata ``groups``: coefficient, Wald CI and p,
    and the odds ratio per doubling of KLD (x in natural-log units)."""
    from statsmodels.discrete.conditional_models import ConditionalLogit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ConditionalLogit(y.astype(float), x[:, None].astype(float), groups=groups).fit(disp=0)
    beta, se = float(res.params[0]), float(res.bse[0])
    lo, hi = (float(v) for v in np.asarray(res.conf_int())[0])
    ln2 = np.log(2)
    return {"beta": beta, "se": se, "p": float(res.pvalues[0]), "or_per_doubling": float(np.exp(beta * ln2)),
            "or_ci_low": float(np.exp(lo * ln2)), "or_ci_high": float(np.exp(hi * ln2)),
            "n_obs": len(y), "n_strata": len(np.unique(groups))}  # fmt: skip


def failure_controls(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix], level: float = 0.95,
                     n_boot: int = 1000, seed: int = 0,
                     max_clogit_cells: int = DEFAULT_MAX_CLOGIT_CELLS) -> dict:  # fmt: skip
    """Every control above; needs matrices built with a per-prompt KLD column."""
    passed, ref, _, finite, logk = prompt_grid(quants, order, matrices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = logk - np.nanmedian(logk, axis=1, keepdims=True)
    rp, rf = ref[None, :] & finite, ~ref[None, :] & finite
    lost, kept = rp & ~passed, rp & passed
    gained, stayed = rf & passed, rf & ~passed
    parts = {
        "gm_ratio_ref_difficulty": (welch_log_ratio_rows, rf, rp),
        "gm_ratio_lost": (welch_log_ratio_rows, lost, kept),
        "gm_ratio_gained": (welch_log_ratio_rows, gained, stayed),
        "auroc_gained": (auroc_rows, gained, stayed),
    }
    cols: dict[str, np.ndarray] = {"n_lost": lost.sum(axis=1), "n_kept": kept.sum(axis=1),
                                   "n_gained": gained.sum(axis=1), "n_stayed_failed": stayed.sum(axis=1)}  # fmt: skip
    for name, (fn, a, b) in parts.items():
        est = fn(logk, a, b, level)
        cols[name], cols[f"{name}_ci_low"], cols[f"{name}_ci_high"] = est["value"], est["ci_low"], est["ci_high"]
        cols[f"{name}_p"] = est["p"]
    per_quant = pd.DataFrame(cols, index=pd.Index(quants, name="quant"))
    cohort: dict[str, dict] = {}
    for key in ("gm_ratio_ref_difficulty", "gm_ratio_lost", "gm_ratio_gained"):
        est = mean_t_ci(np.log(per_quant[key].to_numpy(float)), level)
        cohort[key] = {"value": _exp(est.value), "ci_low": _exp(est.ci_low), "ci_high": _exp(est.ci_high),
                       "n_quants": est.n}  # fmt: skip
    est = mean_t_ci(per_quant["auroc_gained"].to_numpy(float), level, popmean=0.5)
    cohort["auroc_gained"] = est.to_dict() | {"n_quants": est.n}
    # within-prompt: rows = prompts, columns = quants
    within = {}
    for name, vals in (("raw", logk), ("centred", centred)):
        within[f"loss_{name}"] = within_prompt_concordance(vals.T, lost.T, kept.T, level, n_boot, seed)
        within[f"gain_{name}"] = within_prompt_concordance(vals.T, gained.T, stayed.T, level, n_boot, seed)
    cohort["within_prompt"] = within
    cohort["conditional_logit"] = _clogit(centred, lost, kept, max_clogit_cells, seed)
    return {"per_quant": per_quant, "cohort": cohort}


def _clogit(centred: np.ndarray, lost: np.ndarray, kept: np.ndarray, max_cells: int, seed: int) -> dict:
    """Loss on centred log KLD, prompt strata, prompts the reference passed; quants subsampled above the cap."""
    member = lost | kept
    informative = lost.any(axis=0) & kept.any(axis=0)  # strata with both outcomes: the others drop out
    q = lost.shape[0]
    n_cols = int(informative.sum())
    out: dict = {"covariate": "log KLD - quant median log KLD", "subsampled_quants": None}
    if n_cols == 0:
        return out | {"error": "no prompt with both a lost and a kept quant"}
    take = np.arange(q)
    if q * n_cols > max_cells:
        k = max(2, max_cells // n_cols)
        take = np.sort(np.random.default_rng(seed).choice(q, size=min(k, q), replace=False))
        out["subsampled_quants"] = len(take)
    sub_l, sub_m = lost[take][:, informative], member[take][:, informative]
    x = centred[take][:, informative]
    strata = np.broadcast_to(np.arange(n_cols)[None, :], sub_l.shape)
    keep = sub_m & (sub_l.any(axis=0) & (sub_m & ~sub_l).any(axis=0))[None, :] & np.isfinite(x)
    if not keep.any():
        return out | {"error": "no informative stratum after subsampling"}
    try:
        return out | conditional_logit(sub_l[keep], x[keep], strata[keep])
    except Exception as e:  # a singular fit is reported, not raised: it is one control among several
        return out | {"error": f"{type(e).__name__}: {e}"}


def _exp(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(np.exp(v))
