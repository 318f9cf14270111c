"""Direction that is not the score: which way a quant's flips go, independently of how many there are.

``direction = gained - lost`` summed over a task's prompts is n x (accuracy change) exactly, so rho(metric, direction)
is rho(metric, score). What is left to ask is the *balance* of the flips and whether it beats chance:

- **loss rate** = lost / (prompts the reference passed) and **gain rate** = gained / (prompts the reference failed),
  each with its exact (Clopper-Pearson) CI, and their difference gain - loss with Newcombe's hybrid score CI
  (independent binomials: the two rates are measured on disjoint prompts);
- **balance** = (gained - lost) / volume in [-1, 1]; 0 for a quant without flips (no direction at all: it ranks in
  the middle, between quants that break more than they fix and the reverse);
- the **correctness-blind expectation**: a quant that flips a random share of prompts regardless of their answers
  has equal loss and gain rates, so E[gained - lost | volume] = volume x (1 - 2a) at reference accuracy a (summed over
  tasks for the composite); the **excess** = (gained - lost) - that expectation is the part of the direction that
  depends on correctness, and ``balance_excess`` = excess / volume.

On a benchmark the reference passes more often than not (a > 0.5), even blind flips lose more than they gain: a
negative balance alone is not evidence that a quant "knows" which answers to break.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from quantfid.analysis.cohort import COMPOSITE, TaskMatrix


def clopper_pearson(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial CI of k/n, vectorised (beta quantiles; equals ``scipy.stats.binomtest(...).proportion_ci(
    method="exact")``)."""
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    a = 1 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(a / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - a / 2, k + 1, n - k), 1.0)
    bad = ~(n > 0)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def wilson(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval, vectorised (statsmodels ``proportion_confint(method="wilson")``)."""
    from statsmodels.stats.proportion import proportion_confint

    k = np.asarray(k, float)
    n = np.asarray(n, float)
    safe = np.where(n > 0, n, 1.0)
    lo, hi = proportion_confint(k, safe, alpha=1 - level, method="wilson")
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def newcombe_diff_ci(k1, n1, k2, n2, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score CI of k1/n1 - k2/n2 (method 10 of Newcombe 1998), vectorised; equals statsmodels
    ``confint_proportions_2indep(method="newcomb")``."""
    p1 = np.asarray(k1, float) / np.asarray(n1, float)
    p2 = np.asarray(k2, float) / np.asarray(n2, float)
    l1, u1 = wilson(k1, n1, level)
    l2, u2 = wilson(k2, n2, level)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return lo, hi


def direction_table(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix], level: float = 0.95
                    ) -> pd.DataFrame:  # fmt: skip
    """Per quant and unit (each task, ``composite``): rates with CIs, balance, blind expectation and excess."""
    qidx = np.array([order.index(q) for q in quants])
    frame: dict[str, np.ndarray] = {}  # columns, assembled into one frame at the end
    acc = {"lost": 0.0, "gained": 0.0, "n_pass": 0.0, "n_fail": 0.0, "expected": 0.0}
    per = []
    for t in sorted(matrices):
        m = matrices[t]
        q = m.passed[qidx]
        r = m.ref_passed
        lost = (r & ~q).sum(axis=1).astype(float)
        gained = (~r & q).sum(axis=1).astype(float)
        n_pass, n_fail = float(r.sum()), float((~r).sum())
        a = n_pass / (n_pass + n_fail)
        expected = (lost + gained) * (1 - 2 * a)
        per.append((t, lost, gained, n_pass, n_fail, expected))
        acc["lost"] = acc["lost"] + lost
        acc["gained"] = acc["gained"] + gained
        acc["n_pass"] += n_pass
        acc["n_fail"] += n_fail
        acc["expected"] = acc["expected"] + expected
    units = [*per, (COMPOSITE, acc["lost"], acc["gained"], acc["n_pass"], acc["n_fail"], acc["expected"])]
    for u, lost, gained, n_pass, n_fail, expected in units:
        vol = lost + gained
        with np.errstate(invalid="ignore", divide="ignore"):
            frame[f"loss_rate.{u}"] = lost / n_pass if n_pass else np.nan
            frame[f"loss_rate_ci_low.{u}"], frame[f"loss_rate_ci_high.{u}"] = clopper_pearson(lost, n_pass, level)
            frame[f"gain_rate.{u}"] = gained / n_fail if n_fail else np.nan
            frame[f"gain_rate_ci_low.{u}"], frame[f"gain_rate_ci_high.{u}"] = clopper_pearson(gained, n_fail, level)
            lo, hi = newcombe_diff_ci(gained, n_fail, lost, n_pass, level)
            frame[f"gain_minus_loss.{u}"] = np.asarray(frame[f"gain_rate.{u}"]) - np.asarray(frame[f"loss_rate.{u}"])
            frame[f"gain_minus_loss_ci_low.{u}"], frame[f"gain_minus_loss_ci_high.{u}"] = lo, hi
            frame[f"balance.{u}"] = np.where(vol > 0, (gained - lost) / np.where(vol > 0, vol, 1), 0.0)
            frame[f"blind_expected_direction.{u}"] = expected
            frame[f"excess.{u}"] = gained - lost - expected
            frame[f"balance_excess.{u}"] = np.where(vol > 0, (gained - lost - expected) / np.where(vol > 0, vol, 1),
                                                    np.nan)  # fmt: skip
    return pd.DataFrame({k: np.array(np.broadcast_to(v, (len(quants),))) for k, v in frame.items()},
                        index=pd.Index(quants, name="quant"))
