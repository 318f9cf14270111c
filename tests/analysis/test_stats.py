"""Statistics against scipy/statsmodels/sklearn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from quantfid.analysis.stats import (
    adjust_pvalues,
    auroc,
    binomial_estimate,
    bootstrap_indices,
    log_ratio_ci,
    mcnemar_exact_p,
    mean_t_ci,
    resampled_spearman,
    spearman_table,
    spearman_with_ci,
    wilson_ci,
)


def _data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = -0.6 * x + rng.normal(size=n)
    y[:3] = y[3]  # ties
    return x, y


def test_spearman_matches_scipy_and_each_resample_is_spearmanr():
    x, y = _data()
    est = spearman_with_ci(x, y, n_boot=200, seed=0)
    ref = stats.spearmanr(x, y)
    assert est.value == pytest.approx(ref.statistic, abs=1e-12)
    assert est.p == pytest.approx(ref.pvalue, rel=1e-9)
    idx = bootstrap_indices(len(x), 50, seed=5)
    fast = resampled_spearman(x, y, idx)
    slow = [stats.spearmanr(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_ci_agrees_with_scipy_bootstrap():
    x, y = _data(n=60, seed=2)
    ours = spearman_with_ci(x, y, n_boot=1500, seed=0)

    def rho(a, b):
        return stats.spearmanr(a, b).statistic

    ref = stats.bootstrap((x, y), rho, paired=True, vectorized=False, n_resamples=1500, method="percentile",
                          random_state=np.random.default_rng(1)).confidence_interval  # fmt: skip
    assert ours.ci_low == pytest.approx(ref.low, abs=0.05)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.05)
    assert ours.ci_low < ours.value < ours.ci_high


def test_spearman_table_equals_pairwise():
    x, y = _data()
    rows = spearman_table({"x": x, "-x": -x}, {"y": y}, n_boot=300, seed=4)
    single = spearman_with_ci(x, y, n_boot=300, seed=4)
    assert rows[0]["value"] == pytest.approx(single.value)
    assert rows[0]["p"] == pytest.approx(single.p, rel=1e-9)
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx((single.ci_low, single.ci_high))
    assert rows[1]["value"] == pytest.approx(-single.value)
    assert rows[1]["ci_low"] == pytest.approx(-single.ci_high)


def test_spearman_table_perfect_and_constant():
    x = np.arange(10.0)
    rows = spearman_table({"x": x}, {"same": x * 2, "flat": np.ones(10)}, n_boot=50, seed=0)
    assert rows[0]["value"] == pytest.approx(1.0) and rows[0]["p"] == pytest.approx(stats.spearmanr(x, 2 * x).pvalue)
    assert rows[1]["value"] is None  # constant target: undefined, reported as null


def test_spearman_degenerate_is_nan_not_error():
    est = spearman_with_ci([1, 2], [3, 4])
    assert np.isnan(est.value)
    est = spearman_with_ci([1, 1, 1, 1], [1, 2, 3, 4])
    assert np.isnan(est.value)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (1, 9), (3, 3), (7, 2), (20, 35), (0, 1), (40, 12)])
def test_mcnemar_matches_statsmodels(b, c):
    ref = mcnemar([[10, b], [c, 10]], exact=True).pvalue
    assert mcnemar_exact_p(np.array([b]), np.array([c]))[0] == pytest.approx(ref, rel=1e-12)


def test_mcnemar_hand_values():
    # b=0, c=5: two-sided 2 * 0.5^5; b=1, c=9: 2 * (1 + 10) / 2^10
    np.testing.assert_allclose(mcnemar_exact_p([0, 1, 0], [5, 9, 0]), [0.0625, 22 / 1024, 1.0])


def test_holm_and_bh_hand_values():
    p = np.array([0.01, 0.04, 0.03])
    rej, adj = adjust_pvalues(p, "holm", 0.05)
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06])
    assert rej.tolist() == [True, False, False]
    _, adj = adjust_pvalues(p, "bh", 0.05)
    np.testing.assert_allclose(adj, [0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="correction='nope'"):
        adjust_pvalues(p, "nope", 0.05)


def test_auroc_matches_sklearn_and_pair_count():
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.3, 1, 50), 1)  # rounding creates ties
    neg = np.round(rng.normal(0.0, 1, 70), 1)
    est = auroc(pos, neg)
    sk = roc_auc_score(np.r_[np.ones(50), np.zeros(70)], np.r_[pos, neg])
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert est.value == pytest.approx(sk, abs=1e-12)
    assert est.value == pytest.approx(brute, abs=1e-12)
    assert est.ci_low < est.value < est.ci_high


def test_log_ratio_hand_and_welch():
    a = np.log([1.0, 2.0, 4.0, 8.0])
    b = np.log([1.0, 1.0, 2.0])
    est = log_ratio_ci(a, b)
    assert est.value == pytest.approx(np.exp(a.mean() - b.mean()))
    # independent Welch interval in float64
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    d = a.mean() - b.mean()
    assert (est.ci_low, est.ci_high) == pytest.approx((np.exp(d - half), np.exp(d + half)), rel=1e-9)


def test_binomial_and_wilson_match_statsmodels():
    est = binomial_estimate(42, 100)
    lo, hi = proportion_confint(42, 100, method="beta")
    assert (est.value, est.ci_low, est.ci_high) == pytest.approx((0.42, lo, hi), rel=1e-9)
    assert est.p == pytest.approx(stats.binomtest(42, 100).pvalue)
    assert wilson_ci(30, 100) == pytest.approx(proportion_confint(30, 100, method="wilson"), rel=1e-9)


def test_mean_t_ci():
    v = np.array([0.4, 0.5, 0.6, 0.55])
    est = mean_t_ci(v, popmean=0.5)
    ref = stats.ttest_1samp(v, 0.5)
    assert est.value == pytest.approx(v.mean())
    assert est.p == pytest.approx(ref.pvalue)


def test_row_versions_match_scipy_per_row():
    from quantfid.analysis.stats import auroc_rows, welch_log_ratio_rows

    rng = np.random.default_rng(7)
    v = np.round(rng.normal(size=(6, 80)), 1)  # ties
    a = rng.random((6, 80)) < 0.4
    b = ~a & (rng.random((6, 80)) < 0.8)
    a[5] = False  # a row with an empty group -> NaN, no error
    w = welch_log_ratio_rows(v, a, b)
    r = auroc_rows(v, a, b)
    for i in range(5):
        t = stats.ttest_ind(v[i, a[i]], v[i, b[i]], equal_var=False)
        ci = t.confidence_interval()
        d = v[i, a[i]].mean() - v[i, b[i]].mean()
        assert w["value"][i] == pytest.approx(np.exp(d), rel=1e-12)
        assert (w["ci_low"][i], w["ci_high"][i]) == pytest.approx((np.exp(ci.low), np.exp(ci.high)), rel=1e-9)
        assert w["p"][i] == pytest.approx(t.pvalue, rel=1e-9)
        mw = stats.mannwhitneyu(v[i, a[i]], v[i, b[i]], method="asymptotic")
        single = auroc(v[i, a[i]], v[i, b[i]])
        assert r["value"][i] == pytest.approx(single.value, abs=1e-12)
        assert (r["ci_low"][i], r["ci_high"][i]) == pytest.approx((single.ci_low, single.ci_high), abs=1e-12)
        assert r["p"][i] == pytest.approx(mw.pvalue, rel=1e-9)
    assert np.isnan(w["value"][5]) and np.isnan(r["value"][5])


def test_spearman_table_batched_equals_pair_by_pair_with_ties_and_constants():
    rng = np.random.default_rng(8)
    n = 25
    xs = {"a": rng.normal(size=n), "b": np.round(rng.normal(size=n), 0), "flat": np.ones(n)}
    ys = {"u": rng.normal(size=n) + xs["a"], "v": np.round(rng.normal(size=n), 1), "w": rng.integers(0, 3, n) * 1.0}
    rows = {(r["x"], r["y"]): r for r in spearman_table(xs, ys, n_boot=400, seed=2)}
    for xk, xv in xs.items():
        for yk, yv in ys.items():
            single = spearman_with_ci(xv, yv, n_boot=400, seed=2).to_dict()
            got = rows[(xk, yk)]
            for key in ("value", "ci_low", "ci_high", "p"):
                if single[key] is None:
                    assert got[key] is None, (xk, yk, key)
                else:
                    assert got[key] == pytest.approx(single[key], abs=1e-12), (xk, yk, key)


def test_nan_percentile_equals_numpy():
    from quantfid.analysis.stats import nan_percentile

    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 7, 3))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 2, 1] = np.nan  # an all-NaN cell
    a[:49, 4, 0] = np.nan  # a single value
    got = nan_percentile(a, [2.5, 50, 97.5])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanpercentile(a, [2.5, 50, 97.5], axis=0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, equal_nan=True)
    full = rng.normal(size=(40, 5))
    np.testing.assert_allclose(nan_percentile(full, [5, 95]), np.percentile(full, [5, 95], axis=0))


def test_spearman_table_large_path_equals_small_path():
    rng = np.random.default_rng(3)
    n = 400  # 400 quants x 1000 resamples x 60 columns: the row-dot path
    xs = {f"x{i}": rng.normal(size=n) for i in range(30)}
    ys = {f"y{i}": rng.normal(size=n) + xs["x0"] for i in range(30)}
    big = spearman_table(xs, ys, n_boot=1000, seed=1)
    small = [spearman_table({r["x"]: xs[r["x"]]}, {r["y"]: ys[r["y"]]}, n_boot=1000, seed=1)[0] for r in big[:40]]
    for a, b in zip(big[:40], small, strict=True):
        assert (a["ci_low"], a["ci_high"]) == pytest.approx((b["ci_low"], b["ci_high"]), abs=1e-12)
