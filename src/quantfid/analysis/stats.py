"""Statistics used by the analysis, all from scipy/statsmodels; thin wrappers so every number has one definition.

The fast paths (batched bootstrap of Spearman's rho, vectorised exact McNemar) exist because the analysis must run on
1,000 quants x 1,000 prompts in seconds; each is tested against the scipy/statsmodels reference implementation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "fdr_bh": "fdr_bh", "bonferroni": "bonferroni", "none": None}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (and a p-value where one is defined)."""

    value: float
    ci_low: float
    ci_high: float
    p: float | None = None
    n: int | None = None

    def to_dict(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(v):
    """JSON-friendly floats: NaN/inf become None so summary.json stays valid JSON."""
    if isinstance(v, float | np.floating):
        v = float(v)
        return v if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def nan_percentile(a: np.ndarray, qs: list[float]) -> list[np.ndarray]:
    """``np.nanpercentile(a, qs, axis=0)`` (linear interpolation) without its per-cell Python loop: one sort."""
    a = np.asarray(a, float)
    if not np.isnan(a).any():
        return list(np.percentile(a, qs, axis=0))
    s = np.sort(a, axis=0)  # NaN sorts last
    k = (~np.isnan(a)).sum(axis=0)
    out = []
    for q in qs:
        pos = np.maximum(k - 1, 0) * (q / 100.0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
        v_lo = np.take_along_axis(s, lo[None], axis=0)[0]
        v_hi = np.take_along_axis(s, hi[None], axis=0)[0]
        v = v_lo + (v_hi - v_lo) * (pos - lo)
        out.append(np.where(k > 0, v, np.nan))
    return out


def table_records(frame) -> list[dict]:
    """``[{column: value}]`` per row with JSON-clean values, column-wise (fast for tens of thousands of rows)."""
    by_label = records(frame.reset_index(drop=True))
    return [by_label[str(i)] for i in range(len(frame))]


def records(frame) -> dict:
    """{row label: {column: value}} with JSON-clean values (NaN/inf -> None, numpy scalars -> Python); column-wise,
    so a 1,000-quant frame with hundreds of columns converts in milliseconds."""
    cols = {}
    for c in frame.columns:
        s = frame[c]
        if s.dtype.kind == "f":
            a = s.to_numpy(float)
            fin = np.isfinite(a).tolist()
            cols[c] = [v if f else None for v, f in zip(a.tolist(), fin, strict=True)]
        elif s.dtype.kind in "iub":
            cols[c] = s.to_numpy().tolist()
        else:
            cols[c] = [_clean(v.item() if hasattr(v, "item") else v) for v in s.tolist()]
    labels = [str(q) for q in frame.index]
    return {q: {c: vals[i] for c, vals in cols.items()} for i, q in enumerate(labels)}


# ---------------------------------------------------------------- Spearman + bootstrap


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and its two-sided p-value (scipy). NaN when fewer than 3 points or a constant input."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Seeded paired resample indices (n_boot x n), shared by every (variant, target) pair of one zone."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _standardized_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Ranks of each resample (rows), centred and scaled to unit norm; constant rows become NaN."""
    r = stats.rankdata(values[idx], axis=1)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.sqrt((r * r).sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        r /= norm
    r[~np.isfinite(r)] = np.nan
    return r


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(n_boot, n) float counts of how often each item is drawn in each resample (rows of idx)."""
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def _weighted_standardized_ranks(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``_standardized_ranks(values, idx)`` computed from the resample counts ``w`` without sorting every resample:
    one sort of the values, then cumulative counts give each item's average rank within each resample (tied values
    share the mid-rank of their group, as ``rankdata``). Returns (n_boot, n) values such that, for resample b,
    sum_i w[b, i] * out[b, i] * other[b, i] is the Pearson correlation of the resample's ranks; items not drawn
    carry 0. Constant resamples give NaN rows."""
    v = np.asarray(values, float)
    order = np.argsort(v, kind="stable")
    vs = v[order]
    starts = np.flatnonzero(np.r_[True, vs[1:] != vs[:-1]])
    gid = np.cumsum(np.r_[True, vs[1:] != vs[:-1]]) - 1
    ws = w[:, order]
    m = w.sum(axis=1, keepdims=True)
    if len(starts) == len(v):  # no ties: every group is one item
        grank = np.cumsum(ws, axis=1)
        grank -= ws
        grank += (ws + 1.0) / 2.0 - (m + 1.0) / 2.0
    else:
        gw = np.add.reduceat(ws, starts, axis=1)  # (B, G): draws per group of equal values
        grank = (np.cumsum(gw, axis=1) - gw + (gw + 1.0) / 2.0 - (m + 1.0) / 2.0)[:, gid]
    r = np.empty_like(ws)
    r[:, order] = grank
    norm = np.sqrt((w * r * r).sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = r / norm
    r[~np.isfinite(r)] = np.nan
    return r


def resampled_spearman(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman rho on each bootstrap resample (rows of idx): Pearson correlation of average ranks."""
    return np.einsum("ij,ij->i", _standardized_ranks(np.asarray(x, float), idx), _standardized_ranks(y, idx))


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval, ignoring degenerate (NaN) resamples."""
    s = samples[np.isfinite(samples)]
    if len(s) == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.percentile(s, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def spearman_with_ci(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Spearman rho, p-value, and a seeded percentile bootstrap CI (resampling quants, pairs kept together)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho, p = spearman(x, y)
    if not np.isfinite(rho) or n_boot <= 0:
        return Estimate(rho, float("nan"), float("nan"), p, len(x))
    lo, hi = percentile_ci(resampled_spearman(x, y, bootstrap_indices(len(x), n_boot, seed)), level)
    return Estimate(rho, lo, hi, p, len(x))


def _rho_p(rx: np.ndarray, ry: np.ndarray) -> tuple[float, float]:
    """Spearman rho and p from full-sample standardized ranks; p as scipy.spearmanr computes it (t, n-2 df)."""
    n = len(rx)
    if n < 3 or not (np.isfinite(rx).all() and np.isfinite(ry).all()):
        return float("nan"), float("nan")
    rho = float(np.clip(rx @ ry, -1.0, 1.0))
    if abs(rho) == 1.0:
        return rho, 0.0
    t = rho * np.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
    return rho, float(2 * stats.t.sf(abs(t), n - 2))


def spearman_table(
    xs: dict[str, np.ndarray], ys: dict[str, np.ndarray], n_boot: int, seed: int, level: float = 0.95
) -> list[dict]:
    """rho/p/CI for every (x, y) pair on one set of quants: ranks (full sample and each resample) are computed once
    per column and every pair's resampled rho comes from one batched product, so a 1,000-quant cohort with dozens of
    variants and targets costs seconds. Same numbers as ``spearman_with_ci`` pair by pair (tested)."""
    n = len(next(iter(xs.values()))) if xs else 0
    xnames, ynames = list(xs), list(ys)
    if n < 3 or not ynames:  # no correlation is defined on fewer than 3 quants (e.g. an empty silent zone)
        nan = float("nan")
        return [{"x": x, "y": y, **Estimate(nan, nan, nan, nan, n).to_dict()} for x in xs for y in ys]
    every = np.arange(n)[None, :]
    xf = np.stack([_standardized_ranks(np.asarray(xs[k], float), every)[0] for k in xnames])  # (V, n)
    yf = np.stack([_standardized_ranks(np.asarray(ys[k], float), every)[0] for k in ynames])  # (T, n)
    rho = np.clip(xf @ yf.T, -1.0, 1.0)  # NaN where a column is constant
    with np.errstate(invalid="ignore", divide="ignore"):
        t = rho * np.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
        p = np.where(np.abs(rho) == 1.0, 0.0, 2 * stats.t.sf(np.abs(t), n - 2))  # as scipy.spearmanr
    lo = np.full(rho.shape, np.nan)
    hi = np.full(rho.shape, np.nan)
    if n_boot > 0:
        w = resample_counts(bootstrap_indices(n, n_boot, seed), n)  # same resamples, ranked without sorting each
        yb = [w * _weighted_standardized_ranks(ys[k], w) for k in ynames]  # (B, n) each
        boot = np.empty((n_boot, len(xnames), len(ynames)))
        if n_boot * n * (len(xnames) + len(ynames)) <= 20_000_000:  # small cohorts: one batched product
            xb = np.stack([_weighted_standardized_ranks(xs[k], w) for k in xnames], axis=1)  # (B, V, n)
            ys_ = np.stack(yb, axis=2)  # (B, n, T)
            boot = np.matmul(np.nan_to_num(xb), np.nan_to_num(ys_))
            boot[np.isnan(xb).any(axis=2)[:, :, None] | np.isnan(ys_).any(axis=1)[:, None, :]] = np.nan
        else:  # large cohorts: row dots, no stacked copies
            for i, k in enumerate(xnames):
                xb = _weighted_standardized_ranks(xs[k], w)
                for j in range(len(ynames)):
                    boot[:, i, j] = np.einsum("ij,ij->i", xb, yb[j])
        # a constant resample has no rho (NaN): left out of the percentiles, as percentile_ci does
        a = (1 - level) / 2
        lo, hi = nan_percentile(boot, [100 * a, 100 * (1 - a)])  # all-NaN cells: no CI
        lo = np.where(np.isfinite(rho), lo, np.nan)
        hi = np.where(np.isfinite(rho), hi, np.nan)
    out: list[dict] = []
    for i, xn in enumerate(xnames):
        for j, yn in enumerate(ynames):
            r = float(rho[i, j])
            ok = np.isfinite(r)
            out.append({"x": xn, "y": yn, "value": r if ok else None, "ci_low": _clean(float(lo[i, j])),
                        "ci_high": _clean(float(hi[i, j])), "p": _clean(float(p[i, j])) if ok else None,
                        "n": n})  # fmt: skip
    return out


# ---------------------------------------------------------------- paired tests


def mcnemar_exact_p(lost: np.ndarray, gained: np.ndarray) -> np.ndarray:
    """Exact McNemar p-value from the discordant counts: two-sided binomial test of lost vs gained at 1/2.

    Equals statsmodels' ``mcnemar(table, exact=True).pvalue``; vectorised so 1,000 quants x tasks cost nothing.
    No discordant pairs -> p = 1 (nothing differs).
    """
    b = np.asarray(lost, dtype=np.int64)
    c = np.asarray(gained, dtype=np.int64)
    n = b + c
    p = 2.0 * stats.binom.cdf(np.minimum(b, c), n, 0.5)
    return np.where(n == 0, 1.0, np.minimum(p, 1.0))


def adjust_pvalues(p: np.ndarray, method: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-comparison correction (statsmodels ``multipletests``): returns (reject, adjusted p)."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction={method!r} is not known; use one of {sorted(CORRECTIONS)}")
    p = np.asarray(p, float)
    if CORRECTIONS[method] is None or p.size == 0:
        return p < alpha, p.copy()
    reject, p_adj, _, _ = multipletests(p, alpha=alpha, method=CORRECTIONS[method])
    return reject, p_adj


def wilson_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy ``binomtest``)."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def binomial_estimate(k: int, n: int, level: float = 0.95, p0: float = 0.5) -> Estimate:
    """Proportion k/n with its exact (Clopper-Pearson) CI and the two-sided binomial test against p0."""
    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), None, 0)
    res = stats.binomtest(int(k), int(n), p0)
    ci = res.proportion_ci(confidence_level=level, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high), float(res.pvalue), int(n))


# ---------------------------------------------------------------- failure prediction


def log_ratio_ci(log_a: np.ndarray, log_b: np.ndarray, level: float = 0.95) -> Estimate:
    """Geometric-mean ratio exp(mean log a - mean log b) with a Welch t CI on the log scale (scipy ttest_ind)."""
    log_a, log_b = np.asarray(log_a, float), np.asarray(log_b, float)
    if len(log_a) < 2 or len(log_b) < 2:
        return Estimate(float("nan"), float("nan"), float("nan"), None, len(log_a) + len(log_b))
    diff = log_a.mean() - log_b.mean()
    res = stats.ttest_ind(log_a, log_b, equal_var=False)
    if not np.isfinite(res.statistic):  # both groups constant
        return Estimate(float(np.exp(diff)), float("nan"), float("nan"), None, len(log_a) + len(log_b))
    ci = res.confidence_interval(confidence_level=level)
    return Estimate(
        float(np.exp(diff)), float(np.exp(ci.low)), float(np.exp(ci.high)), float(res.pvalue), len(log_a) + len(log_b)
    )


def auroc(pos: np.ndarray, neg: np.ndarray, level: float = 0.95) -> Estimate:
    """AUROC of a score for separating pos from neg = U / (n_pos n_neg) (scipy Mann-Whitney U, ties count 1/2).

    CI: Hanley & McNeil (1982) standard error, clipped to [0, 1]; p: the Mann-Whitney two-sided test.
    """
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    n1, n0 = len(pos), len(neg)
    if n1 == 0 or n0 == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), None, n1 + n0)
    res = stats.mannwhitneyu(pos, neg, alternative="two-sided")
    auc = float(res.statistic) / (n1 * n0)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)
    z = stats.norm.ppf(0.5 + level / 2)
    se = float(np.sqrt(max(var, 0.0)))
    return Estimate(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), float(res.pvalue), n1 + n0)


def mean_t_ci(values: np.ndarray, level: float = 0.95, popmean: float = 0.0) -> Estimate:
    """Mean with a one-sample t CI and the t-test against ``popmean`` (scipy): summarises per-quant estimates over
    the cohort with quants as the units."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        m = float(v.mean()) if len(v) else float("nan")
        return Estimate(m, float("nan"), float("nan"), None, len(v))
    if np.ptp(v) == 0:
        return Estimate(float(v[0]), float(v[0]), float(v[0]), None, len(v))
    res = stats.ttest_1samp(v, popmean)
    ci = res.confidence_interval(confidence_level=level)
    return Estimate(float(v.mean()), float(ci.low), float(ci.high), float(res.pvalue), len(v))


# ---------------------------------------------------------------- row-wise (one row per quant) versions


def welch_log_ratio_rows(logv: np.ndarray, a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """``log_ratio_ci`` for every row at once: rows of ``logv`` with group masks ``a`` and ``b`` (same shape).

    Welch's t on the log scale exactly as ``scipy.stats.ttest_ind(equal_var=False)`` computes it (tested against it);
    rows with fewer than 2 values in a group give NaN.
    """
    out = {}
    na, nb = a.sum(axis=1), b.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = np.where(a, logv, 0.0).sum(axis=1) / na
        mb = np.where(b, logv, 0.0).sum(axis=1) / nb
        va = np.where(a, (logv - ma[:, None]) ** 2, 0.0).sum(axis=1) / (na - 1) / na
        vb = np.where(b, (logv - mb[:, None]) ** 2, 0.0).sum(axis=1) / (nb - 1) / nb
        d = ma - mb
        se = np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        t = d / se
        half = stats.t.ppf(0.5 + level / 2, df) * se
        ok = (na >= 2) & (nb >= 2)
        out["value"] = np.where(ok, np.exp(d), np.nan)
        good = ok & (se > 0)
        out["ci_low"] = np.where(good, np.exp(d - half), np.nan)
        out["ci_high"] = np.where(good, np.exp(d + half), np.nan)
        out["p"] = np.where(good, 2 * stats.t.sf(np.abs(t), df), np.nan)
    out["n"] = na + nb
    return out


def auroc_rows(values: np.ndarray, pos: np.ndarray, neg: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """``auroc`` for every row at once: AUROC = U / (n_pos n_neg) from mid-ranks within each row's pos+neg entries
    (ties count 1/2, as Mann-Whitney U), Hanley-McNeil CI, and the Mann-Whitney asymptotic two-sided p-value with
    tie and continuity corrections (``scipy.stats.mannwhitneyu(method="asymptotic")``)."""
    member = pos | neg
    v = np.where(member, values, np.nan)
    r = stats.rankdata(v, axis=1, nan_policy="omit")
    n1, n0 = pos.sum(axis=1).astype(float), neg.sum(axis=1).astype(float)
    n = n1 + n0
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(pos, r, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2
        auc = u / (n1 * n0)
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)
        half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.maximum(var, 0.0))
        # tie term of the U variance: sum over tied groups of (t^3 - t), per row
        tie = np.zeros(len(v))
        srt = np.sort(np.where(member, r, np.inf), axis=1)
        for i in range(len(v)):  # ranks of tied values are equal: count group sizes on the sorted ranks
            row = srt[i][np.isfinite(srt[i])]
            if len(row):
                _, cnt = np.unique(row, return_counts=True)
                tie[i] = float((cnt.astype(float) ** 3 - cnt).sum())
        mu = n1 * n0 / 2
        sigma = np.sqrt(n1 * n0 / 12 * ((n + 1) - tie / (n * (n - 1))))
        z = (np.abs(u - mu) - 0.5) / sigma  # continuity correction toward the mean, as scipy does
        p = np.clip(2 * stats.norm.sf(z), 0, 1)
    ok = (n1 > 0) & (n0 > 0)
    return {
        "value": np.where(ok, auc, np.nan),
        "ci_low": np.where(ok, np.maximum(0.0, auc - half), np.nan),
        "ci_high": np.where(ok, np.minimum(1.0, auc + half), np.nan),
        "p": np.where(ok & (sigma > 0), p, np.nan),
        "n": n,
    }
