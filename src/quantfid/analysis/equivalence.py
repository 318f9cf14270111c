"""The silent zone by equivalence: is a quant's accuracy within +-delta of the reference's, different, or unknown?

Per quant and *unit* (the composite over all prompts, and each task), with per-prompt outcomes (paired):

- the accuracy difference ``diff = (gained - lost) / n`` (quant minus reference, on the same prompts);
- its paired confidence interval: **Tango's score interval** (Tango 1998, Stat Med 17:891), the inversion of the
  score test of ``H0: diff = d0`` with the restricted maximum-likelihood estimate of the discordant cells. It stays
  inside [-1, 1], is not degenerate when there are no flips (half-width z^2/(n + z^2)), and at ``d0 = 0`` its statistic
  is McNemar's ``(gained - lost) / sqrt(gained + lost)``, so "the CI excludes 0" is exactly "the asymptotic McNemar
  test rejects";
- a verdict: **equivalent** when the CI lies inside (-delta, +delta) (a CI inside the margin that excludes 0 is still
  equivalent: a real difference smaller than delta), **different** when the score test at 0 rejects after Holm's
  correction over the quant's units (the CI excludes 0 and is not inside the margin), **indeterminate** otherwise:
  too few prompts to say.

A quant's verdict over its units (``scope="all"``: the composite and every task; ``scope="composite"``: the composite
only): equivalent if every unit is equivalent (an intersection-union test: no multiplicity correction is needed),
different if any unit is different (Holm over the units keeps the chance of a false "different" at alpha per quant),
indeterminate otherwise. There is no correction over quants: each quant is its own decision, so the verdict does not
depend on how many other quants were swept (the McNemar zone's Holm over all quant x task tests did: issue 12).

Without per-prompt outcomes (a cohort table with score and n only) the CI is the unpaired Miettinen-Nurminen score
interval (statsmodels ``confint_proportions_2indep(method="score")``) and the test its score test: wider than the
paired interval (it ignores that both models answered the same prompts); the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from quantfid.analysis.cohort import COMPOSITE, N_PREFIX, SCORE_PREFIX, AnalysisInputError, Cohort, TaskMatrix

VERDICTS = ("equivalent", "different", "indeterminate")
SCOPES = ("all", "composite")
DEFAULT_DELTA = 0.02


# ---------------------------------------------------------------- Tango's score interval (paired proportions)


def tango_z(gained, lost, n, d0) -> np.ndarray:
    """Tango's score statistic for ``H0: p_quant - p_ref = d0`` (broadcasts).

    With n12 = gained (quant passed, reference failed), n21 = lost and d0 = pi12 - pi21:
    ``Z = (n12 - n21 - n d0) / sqrt(n (2 p21~ + d0 (1 - d0)))`` where p21~ is the restricted MLE of pi21,
    ``(sqrt(B^2 - 4AC) - B) / 2A`` with ``A = 2n, B = -n12 - n21 + (2n - n12 + n21) d0, C = -n21 d0 (1 - d0)``.
    Decreasing in d0; +inf/-inf where the variance vanishes with a non-zero numerator.
    """
    b = np.asarray(gained, float)
    c = np.asarray(lost, float)
    n = np.asarray(n, float)
    d = np.asarray(d0, float)
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * d
    c_ = -c * d * (1.0 - d)
    with np.errstate(invalid="ignore", divide="ignore"):
        p21 = (np.sqrt(np.maximum(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
        var = n * (2.0 * p21 + d * (1.0 - d))
        num = b - c - n * d
        z = num / np.sqrt(np.maximum(var, 0.0))
    z = np.where(var > 1e-300, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))
    return np.where(n > 0, z, np.nan)


def tango_ci(gained, lost, n, level: float = 0.95, iterations: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Tango's score CI of the paired difference (gained - lost)/n, vectorised (bisection on the monotone statistic).

    Tested against the published worked example (Fagerland, Lydersen & Laake 2017, ch. 8: Cavo et al. 2012,
    n12 = 6, n21 = 16, N = 161: -0.0621 (95% CI -0.1240 to -0.0054)) and an independent numerical inversion.
    """
    b = np.asarray(gained, float)
    c = np.asarray(lost, float)
    n = np.asarray(n, float)
    b, c, n = np.broadcast_arrays(b, c, n)
    z = stats.norm.ppf(0.5 + level / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(n > 0, (b - c) / np.where(n > 0, n, 1.0), np.nan)
    # lower bound: Z(d) = z on [-1, est] (Z(-1) = +inf unless est = -1); upper: Z(d) = -z on [est, 1]
    lo_a, lo_b = np.full(b.shape, -1.0), np.where(np.isfinite(est), est, 0.0)
    hi_a, hi_b = lo_b.copy(), np.ones(b.shape)
    for _ in range(iterations):
        mid = 0.5 * (lo_a + lo_b)
        above = tango_z(b, c, n, mid) >= z  # still outside the interval on the left
        lo_a, lo_b = np.where(above, mid, lo_a), np.where(above, lo_b, mid)
        mid = 0.5 * (hi_a + hi_b)
        below = tango_z(b, c, n, mid) <= -z
        hi_a, hi_b = np.where(below, hi_a, mid), np.where(below, mid, hi_b)
    lo = np.where(tango_z(b, c, n, -1.0) >= z, lo_b, -1.0)
    hi = np.where(tango_z(b, c, n, 1.0) <= -z, hi_a, 1.0)
    lo = np.where(np.isfinite(est), lo, np.nan)
    hi = np.where(np.isfinite(est), hi, np.nan)
    return lo, hi


def tango_p0(gained, lost) -> np.ndarray:
    """Two-sided p of Tango's score test at d0 = 0 (the asymptotic McNemar test): the CI excludes 0 iff p < alpha."""
    b = np.asarray(gained, float)
    c = np.asarray(lost, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (b - c) / np.sqrt(b + c)
    return np.where(b + c > 0, 2.0 * stats.norm.sf(np.abs(z)), 1.0)


# ---------------------------------------------------------------- unpaired fallback (score and n only)


def unpaired_ci(k_quant, n_quant, k_ref, n_ref, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ci_low, ci_high, p) of p_quant - p_ref from independent binomials: the Miettinen-Nurminen score interval and
    score test of statsmodels (``confint_proportions_2indep`` / ``test_proportions_2indep``, method "score")."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    kq, nq = np.atleast_1d(np.asarray(k_quant, float)), np.atleast_1d(np.asarray(n_quant, float))
    kr, nr = np.broadcast_to(k_ref, kq.shape).astype(float), np.broadcast_to(n_ref, kq.shape).astype(float)
    lo, hi, p = (np.full(kq.shape, np.nan) for _ in range(3))
    for i in range(len(kq)):
        if not (nq[i] > 0 and nr[i] > 0):
            continue
        lo[i], hi[i] = confint_proportions_2indep(kq[i], nq[i], kr[i], nr[i], method="score", compare="diff",
                                                  alpha=1 - level)  # fmt: skip
        if kq[i] / nq[i] == kr[i] / nr[i]:
            p[i] = 1.0
        else:
            p[i] = test_proportions_2indep(kq[i], nq[i], kr[i], nr[i], method="score", compare="diff").pvalue
    return lo, hi, p


# ---------------------------------------------------------------- verdicts


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values within each row (vectorised; equals statsmodels ``multipletests(method="holm")`` per
    row, which is too slow to call once per quant)."""
    p = np.atleast_2d(np.asarray(p, float))
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    adj = np.minimum(np.maximum.accumulate(ps * (m - np.arange(m))[None, :], axis=1), 1.0)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=1)
    return out


@dataclass(frozen=True)
class UnitEvidence:
    """Per-quant arrays for one unit (composite or a task)."""

    unit: str
    n: np.ndarray
    lost: np.ndarray | None
    gained: np.ndarray | None
    diff: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    var: np.ndarray | None = None  # unpaired only: p_q(1-p_q) + p_r(1-p_r), the per-prompt variance of the difference


def unit_verdicts(lo: np.ndarray, hi: np.ndarray, p_adj: np.ndarray, delta: float, alpha: float) -> np.ndarray:
    """equivalent (CI inside the open margin) > different (adjusted p < alpha) > indeterminate."""
    eq = (lo > -delta) & (hi < delta)
    diff = ~eq & (p_adj < alpha)
    return np.where(eq, "equivalent", np.where(diff, "different", "indeterminate"))


def combine_verdicts(per_unit: np.ndarray) -> np.ndarray:
    """Rows = quants, columns = units: equivalent only if every unit is; different if any is."""
    every_eq = (per_unit == "equivalent").all(axis=1)
    any_diff = (per_unit == "different").any(axis=1)
    return np.where(every_eq, "equivalent", np.where(any_diff, "different", "indeterminate"))


def paired_evidence(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix], level: float,
                    halves: np.ndarray | None = None) -> list[UnitEvidence]:  # fmt: skip
    """Paired evidence per unit: composite first, then the tasks in sorted order.

    ``halves`` (optional, bool over the concatenated prompts of the sorted tasks) restricts every count to those
    prompts: the cross-fitting folds decide the zone on one half this way.
    """
    qidx = np.array([order.index(q) for q in quants])
    units: list[UnitEvidence] = []
    tot_l = np.zeros(len(quants))
    tot_g = np.zeros(len(quants))
    tot_n = 0.0
    start = 0
    per_task = []
    for t in sorted(matrices):
        m = matrices[t]
        k = len(m.prompt_ids)
        keep = np.ones(k, bool) if halves is None else halves[start : start + k]
        start += k
        q = m.passed[qidx][:, keep]
        r = m.ref_passed[keep]
        lost = (r & ~q).sum(axis=1).astype(float)
        gained = (~r & q).sum(axis=1).astype(float)
        n = float(keep.sum())
        per_task.append((t, lost, gained, n))
        tot_l += lost
        tot_g += gained
        tot_n += n
    for name, lost, gained, n in [(COMPOSITE, tot_l, tot_g, tot_n), *per_task]:
        nn = np.full(len(quants), n)
        lo, hi = tango_ci(gained, lost, nn, level)
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = (gained - lost) / nn
        units.append(UnitEvidence(name, nn, lost, gained, diff, lo, hi, tango_p0(gained, lost)))
    return units


def unpaired_evidence(cohort: Cohort, level: float) -> list[UnitEvidence]:
    """Unpaired evidence per unit from score and n (composite first, then tasks)."""
    t = cohort.table
    quants = cohort.quants
    units = []
    for name in [COMPOSITE, *sorted(cohort.tasks)]:
        s, nc = SCORE_PREFIX + name, N_PREFIX + name
        if s not in t.columns:
            continue
        if nc not in t.columns or t.loc[[*quants, cohort.reference], nc].isna().any():
            raise AnalysisInputError(
                f"the equivalence zone without per-prompt outcomes needs the number of prompts (column {nc!r} / the "
                "CSV's 'n'); add n, or use --silent-zone delta --band B"
            )
        nq = t.loc[quants, nc].to_numpy(float)
        kq = np.round(t.loc[quants, s].to_numpy(float) * nq)
        nr = float(t.at[cohort.reference, nc])
        kr = round(float(t.at[cohort.reference, s]) * nr)
        lo, hi, p = unpaired_ci(kq, nq, kr, nr, level)
        diff = kq / nq - kr / nr
        pq, pr = kq / nq, kr / nr
        units.append(UnitEvidence(name, nq, None, None, diff, lo, hi, p, pq * (1 - pq) + pr * (1 - pr)))
    if not cohort.tasks:  # only a composite: nothing more
        return units
    return units


def equivalence_frame(quants: list[str], units: list[UnitEvidence], delta: float, alpha: float, scope: str,
                      paired: bool) -> pd.DataFrame:  # fmt: skip
    """Per-quant evidence and verdicts (``verdict``: the configured scope; ``verdict_composite``: the composite
    alone; ``silent`` = equivalent under the configured scope)."""
    if scope not in SCOPES:
        raise AnalysisInputError(f"equivalence scope={scope!r} must be one of {SCOPES}")
    if not units:
        raise AnalysisInputError("no unit to test equivalence on (no composite score)")
    frame: dict[str, object] = {}  # columns, assembled into one frame at the end
    used = units if scope == "all" else units[:1]
    pmat = np.stack([u.p for u in used], axis=1)
    adj = holm_rows(pmat)
    verdicts = np.empty((len(quants), len(units)), dtype=object)
    for j, u in enumerate(units):
        if u.lost is not None:
            frame[f"lost.{u.unit}"] = u.lost.astype(int)
            frame[f"gained.{u.unit}"] = u.gained.astype(int)
            with np.errstate(invalid="ignore", divide="ignore"):
                frame[f"discordance.{u.unit}"] = (u.lost + u.gained) / u.n
        if u.var is not None:
            frame[f"var.{u.unit}"] = u.var
        frame[f"n.{u.unit}"] = u.n.astype(int)
        frame[f"diff.{u.unit}"] = u.diff
        frame[f"ci_low.{u.unit}"] = u.ci_low
        frame[f"ci_high.{u.unit}"] = u.ci_high
        frame[f"p.{u.unit}"] = u.p
        p_adj = adj[:, j] if j < len(used) else u.p
        frame[f"p_adj.{u.unit}"] = p_adj
        verdicts[:, j] = unit_verdicts(u.ci_low, u.ci_high, p_adj, delta, alpha)
        frame[f"verdict.{u.unit}"] = verdicts[:, j]
    frame["verdict"] = combine_verdicts(verdicts[:, : len(used)])
    comp_adj = units[0].p  # the composite alone: one test, nothing to correct
    frame["verdict_composite"] = unit_verdicts(units[0].ci_low, units[0].ci_high, comp_adj, delta, alpha)
    frame["paired"] = np.full(len(quants), paired)
    frame["silent"] = frame["verdict"] == "equivalent"
    return pd.DataFrame(frame, index=pd.Index(quants, name="quant"))


def equivalence_zone(cohort: Cohort, matrices: dict[str, TaskMatrix] | None, delta: float, alpha: float,
                     level: float, scope: str) -> pd.DataFrame:  # fmt: skip
    """The equivalence zone of a cohort: paired when per-prompt outcomes exist, unpaired from score and n otherwise."""
    if not 0 < delta < 1:
        raise AnalysisInputError(f"equivalence margin delta={delta} must lie in (0, 1), e.g. 0.02 (two points)")
    if matrices is not None:
        units = paired_evidence(cohort.quants, list(cohort.table.index), matrices, level)
        return equivalence_frame(cohort.quants, units, delta, alpha, scope, True)
    return equivalence_frame(cohort.quants, unpaired_evidence(cohort, level), delta, alpha, scope, False)


def groups(frame: pd.DataFrame, column: str = "verdict") -> dict[str, list[str]]:
    """{verdict: [quants]} in table order."""
    return {v: [str(q) for q in frame.index[frame[column] == v]] for v in VERDICTS}
