"""Per-prompt failure prediction: does a prompt's KLD say whether the quant fails it?

Per quant: geometric-mean per-prompt KLD of failed prompts / of passed prompts (Welch t CI on log KLD) and the AUROC
of per-prompt KLD for predicting failure (Mann-Whitney U, Hanley-McNeil CI). Two populations: all prompts (failed vs
passed) and, sharper, the prompts the reference passed (lost vs kept). The cohort summary treats quants as the units:
the geometric mean of per-quant ratios and the mean AUROC with a one-sample t CI over quants.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.stats import auroc_rows, log_ratio_ci, mean_t_ci, welch_log_ratio_rows

KLD_FLOOR = 1e-10  # per-prompt KLD <= 0 (float rounding) is floored here before taking logs; the count is reported


def prompt_grid(
    quants: list[str], order: list[str], matrices: dict[str, TaskMatrix]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All tasks' prompts side by side for ``quants`` (rows; ``order`` = the matrices' row order): passed
    (quants x prompts), the reference's passed (prompts), per-prompt KLD, where it is finite, and its log floored at
    KLD_FLOOR (NaN where not finite). One layout for failure prediction, its controls and the router baselines."""
    qidx = np.array([order.index(q) for q in quants])
    tasks = sorted(matrices)
    passed = np.concatenate([matrices[t].passed[qidx] for t in tasks], axis=1)
    ref = np.concatenate([matrices[t].ref_passed for t in tasks])
    kld = np.concatenate([matrices[t].kld[qidx] for t in tasks], axis=1)
    finite = np.isfinite(kld)
    logk = np.log(np.maximum(np.where(finite, kld, np.nan), KLD_FLOOR))
    return passed, ref, kld, finite, logk


def failure_prediction(
    quants: list[str], order: list[str], matrices: dict[str, TaskMatrix], level: float = 0.95, progress: bool = True
) -> dict:
    """Per-quant and cohort-level failure prediction from per-prompt KLD; needs matrices built with a KLD column."""
    passed, ref, kld, finite, logk = prompt_grid(quants, order, matrices)
    n_floored = int((finite & (kld <= KLD_FLOOR)).sum())
    fail, pas = finite & ~passed, finite & passed
    lost, kept = fail & ref[None, :], pas & ref[None, :]
    cols: dict[str, np.ndarray] = {"n_failed": fail.sum(axis=1), "n_passed": pas.sum(axis=1),
                                   "n_lost": lost.sum(axis=1), "n_kept": kept.sum(axis=1)}  # fmt: skip
    parts = [("gm_ratio", welch_log_ratio_rows, fail, pas), ("auroc", auroc_rows, fail, pas),
             ("gm_ratio_lost", welch_log_ratio_rows, lost, kept), ("auroc_lost", auroc_rows, lost, kept)]  # fmt: skip
    for name, fn, a, b in tqdm(parts, desc="failure prediction", disable=not progress, leave=False):
        est = fn(logk, a, b, level)
        cols[name], cols[f"{name}_ci_low"], cols[f"{name}_ci_high"] = est["value"], est["ci_low"], est["ci_high"]
        cols[f"{name}_p"] = est["p"]
    per_quant = pd.DataFrame(cols, index=pd.Index(quants, name="quant"))
    cohort = {}
    for key in ("gm_ratio", "gm_ratio_lost"):
        est = mean_t_ci(np.log(per_quant[key].to_numpy(float)), level)
        vals = per_quant[key].to_numpy(float)
        vals = vals[np.isfinite(vals)]
        cohort[key] = {
            "value": _exp(est.value),
            "ci_low": _exp(est.ci_low),
            "ci_high": _exp(est.ci_high),
            "n_quants": est.n,
            "min": float(vals.min()) if len(vals) else None,
            "max": float(vals.max()) if len(vals) else None,
        }
    for key in ("auroc", "auroc_lost"):
        est = mean_t_ci(per_quant[key].to_numpy(float), level, popmean=0.5)
        cohort[key] = est.to_dict() | {"n_quants": est.n}
    fail_all, pass_all = finite & ~passed, finite & passed
    pooled = log_ratio_ci(logk[fail_all], logk[pass_all], level)
    cohort["pooled_gm_ratio"] = pooled.value
    cohort["n_kld_floored"] = n_floored
    with warnings.catch_warnings():  # a quant without any per-prompt KLD has an all-NaN row: its median is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = logk - np.nanmedian(logk, axis=1, keepdims=True)  # within quant: removes its KLD level
    return {
        "per_quant": per_quant,
        "cohort": cohort,
        "log_kld_failed": logk[fail_all],
        "log_kld_passed": logk[pass_all],
        "centred_failed": centred[fail_all],
        "centred_passed": centred[pass_all],
    }


def _exp(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(np.exp(v))
