"""The equivalence silent zone: Tango's paired score interval against a published worked example and an independent
implementation, the verdict rules, the unpaired fallback, and a synthetic cohort whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from quantfid.analysis import AnalysisConfig, Cohort, SilentZoneConfig, analyze
from quantfid.analysis.equivalence import (
    combine_verdicts,
    equivalence_zone,
    holm_rows,
    tango_ci,
    tango_p0,
    unit_verdicts,
    unpaired_ci,
)
from quantfid.analysis.synthetic import make_flip_cohort


def test_tango_ci_published_example():
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, ch. 8 (and the contingencytables
    # R package's tests): complete response before/after consolidation therapy (Cavo et al. 2012), table
    # [[59, 6], [16, 80]]: estimate -0.0621, Tango asymptotic score 95% CI -0.1240 to -0.0054.
    lo, hi = tango_ci(gained=6, lost=16, n=161)
    assert pytest.approx(-0.0621, abs=5e-5) == (6 - 16) / 161
    assert float(lo) == pytest.approx(-0.1240, abs=5e-5)
    assert float(hi) == pytest.approx(-0.0054, abs=5e-5)


def _tango_independent(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Tango's interval the slow way: the restricted MLE of p21 by numerical maximisation of the multinomial
    likelihood (no closed form), the score statistic, and brentq for the two limits."""
    z = stats.norm.ppf(0.5 + level / 2)

    def p21_mle(d: float) -> float:
        lo_, hi_ = max(0.0, -d), (1.0 - d) / 2.0

        def nll(p21: float) -> float:
            p12, rest = p21 + d, 1.0 - 2.0 * p21 - d
            terms = [(b, p12), (c, p21), (n - b - c, rest)]
            return -sum(k * np.log(max(p, 1e-300)) for k, p in terms if k > 0)

        if hi_ - lo_ < 1e-12:
            return lo_
        r = optimize.minimize_scalar(nll, bounds=(lo_, hi_), method="bounded", options={"xatol": 1e-13})
        return float(r.x)

    def score(d: float) -> float:
        var = n * (2 * p21_mle(d) + d * (1 - d))
        return (b - c - n * d) / np.sqrt(var) if var > 0 else np.sign(b - c - n * d) * np.inf

    est = (b - c) / n
    eps = 1e-9
    lo = -1.0 if score(-1 + eps) < z else optimize.brentq(lambda d: score(d) - z, -1 + eps, est, xtol=1e-12)
    hi = 1.0 if score(1 - eps) > -z else optimize.brentq(lambda d: score(d) + z, est, 1 - eps, xtol=1e-12)
    return lo, hi


@pytest.mark.parametrize("b,c,n", [(6, 16, 161), (0, 0, 60), (11, 29, 420), (24, 61, 420), (3, 0, 40),
                                   (0, 12, 30), (1, 7, 21), (40, 20, 160), (5, 5, 1000)])  # fmt: skip
def test_tango_ci_matches_an_independent_numerical_inversion(b, c, n):
    lo, hi = tango_ci(b, c, n)
    ilo, ihi = _tango_independent(b, c, n)
    assert float(lo) == pytest.approx(ilo, abs=2e-6)
    assert float(hi) == pytest.approx(ihi, abs=2e-6)
    assert float(lo) <= (b - c) / n <= float(hi)


def test_tango_ci_without_flips_is_not_degenerate_and_vectorises():
    z2 = stats.norm.ppf(0.975) ** 2
    lo, hi = tango_ci(np.zeros(3), np.zeros(3), np.array([60, 189, 420]))
    np.testing.assert_allclose(hi, z2 / (np.array([60, 189, 420]) + z2), rtol=1e-9)
    np.testing.assert_allclose(lo, -hi)
    lo2, hi2 = tango_ci([6, 0], [16, 0], [161, 60])
    assert (lo2[0], hi2[0]) == pytest.approx((float(tango_ci(6, 16, 161)[0]), float(tango_ci(6, 16, 161)[1])))


@pytest.mark.parametrize("b,c", [(0, 5), (3, 9), (20, 11), (7, 7), (1, 0)])
def test_score_test_at_zero_is_the_asymptotic_mcnemar_test(b, c):
    ref = mcnemar([[50, b], [c, 50]], exact=False, correction=False).pvalue
    assert float(tango_p0(b, c)) == pytest.approx(ref, rel=1e-10)
    # and the CI excludes 0 exactly when that test rejects at 5%
    lo, hi = tango_ci(b, c, 110)
    assert (float(lo) > 0 or float(hi) < 0) == (ref < 0.05)


def test_tango_ci_coverage_by_simulation():
    """95% intervals cover the true paired difference in about 95% of simulated benchmarks."""
    rng = np.random.default_rng(7)
    n, reps = 200, 3000
    p12, p21 = 0.04, 0.09  # gained, lost probabilities: true difference -0.05
    draws = rng.multinomial(n, [p12, p21, 1 - p12 - p21], size=reps)
    lo, hi = tango_ci(draws[:, 0], draws[:, 1], np.full(reps, n))
    cover = np.mean((lo <= p12 - p21) & (p12 - p21 <= hi))
    assert 0.935 <= cover <= 0.965


def test_holm_rows_equals_statsmodels():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, size=(8, 6))  # few rows: statsmodels' Holm runs gc.collect() on every call
    p[3, 2] = p[3, 4]  # a tie
    ours = holm_rows(p)
    ref = np.stack([multipletests(row, method="holm")[1] for row in p])
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_verdict_rules_by_hand():
    lo = np.array([-0.010, 0.004, -0.080, -0.080, -0.019, 0.010])
    hi = np.array([0.012, 0.015, -0.030, 0.010, 0.050, 0.030])
    p = np.array([0.5, 0.01, 0.001, 0.2, 0.3, 0.001])
    v = unit_verdicts(lo, hi, p, delta=0.02, alpha=0.05)
    # inside the margin (even excluding 0) -> equivalent; excludes 0 and not inside -> different; else indeterminate
    assert v.tolist() == ["equivalent", "equivalent", "different", "indeterminate", "indeterminate", "different"]
    per_unit = np.array([["equivalent", "equivalent"], ["equivalent", "indeterminate"], ["indeterminate", "different"]])
    assert combine_verdicts(per_unit).tolist() == ["equivalent", "indeterminate", "different"]


def test_known_truth_cohort_is_classified_correctly():
    """Quants with known flip rates on 2 x 1000 prompts (reference accuracy 0.6):
    eq*: truly equivalent (1% flips, balanced: true difference 0); diff*: truly different (true -0.10);
    noisy*: true difference 0 but 40% of answers flip: too few prompts to show it within +-0.02 -> indeterminate."""
    a = 0.6
    rates = {}
    for i in range(4):
        rates[f"eq{i}"] = (0.01 / a / 2, 0.01 / (1 - a) / 2)
        rates[f"diff{i}"] = (0.10 / a + 0.02, 0.02 * a / (1 - a))  # lost - gained rate gap -> -0.10
        rates[f"noisy{i}"] = (0.4 / a / 2, 0.4 / (1 - a) / 2)
    wrong = 0
    for seed in range(3):
        c = make_flip_cohort(rates, n_prompts=1000, ref_accuracy=a, seed=seed)
        z = equivalence_zone(c, c.task_matrices(None), delta=0.02, alpha=0.05, level=0.95, scope="all")
        for q, v in z["verdict"].items():
            want = {"eq": "equivalent", "diff": "different", "noisy": "indeterminate"}[q.rstrip("0123456789")]
            wrong += v != want
    assert wrong <= 1  # 36 verdicts; one miss allowed (each CI misses its truth 5% of the time by design)


def test_undersampled_quant_becomes_equivalent_with_more_prompts():
    a = 0.6
    rates = {"q": (0.02 / a / 2, 0.02 / (1 - a) / 2), "x1": (0.2, 0.1), "x2": (0.3, 0.1)}
    small = make_flip_cohort(rates, n_prompts=60, ref_accuracy=a, seed=1)
    big = make_flip_cohort(rates, n_prompts=1500, ref_accuracy=a, seed=1)
    vs = equivalence_zone(small, small.task_matrices(None), 0.02, 0.05, 0.95, "all")
    vb = equivalence_zone(big, big.task_matrices(None), 0.02, 0.05, 0.95, "all")
    assert vs.at["q", "verdict"] == "indeterminate" and vb.at["q", "verdict"] == "equivalent"


def test_unpaired_ci_is_statsmodels_and_wider_than_paired():
    from statsmodels.stats.proportion import confint_proportions_2indep

    lo, hi, p = unpaired_ci([250], [420], 262, 420)
    rlo, rhi = confint_proportions_2indep(250, 420, 262, 420, method="score", compare="diff")
    assert (lo[0], hi[0]) == pytest.approx((rlo, rhi))
    assert 0.05 < p[0] < 1
    plo, phi = tango_ci(18, 30, 420)  # the same scores, paired, with 48 flips
    assert hi[0] - lo[0] > 1.5 * (float(phi) - float(plo))


def test_csv_cohort_gets_unpaired_equivalence_and_scope_option():
    table = pd.DataFrame(
        {"kld_mean": [0.0, 0.001, 0.02, 0.3], "score.composite": [0.70, 0.70, 0.69, 0.50],
         "n.composite": [20000, 20000, 20000, 20000]},
        index=["reference", "q8", "q4", "q2"],
    )  # fmt: skip
    res = analyze(Cohort(table, ["kld_mean"], [], "reference"), AnalysisConfig(n_boot=0, progress=False))
    eq = res.summary["equivalence"]
    assert eq["paired"] is False and eq["counts"] == {"equivalent": 2, "different": 1, "indeterminate": 0}
    assert sorted(res.summary["silent_zone"]["silent_quants"]) == ["q4", "q8"]
    assert "crossfit" not in res.summary  # cross-fitting splits prompts: not without per-prompt outcomes
    assert any("no cross-fitting" in n for n in res.summary["notes"])


def test_bad_equivalence_settings_are_clear_errors():
    from quantfid.analysis import AnalysisInputError

    with pytest.raises(AnalysisInputError, match="delta=0"):
        SilentZoneConfig(delta=0)
    with pytest.raises(AnalysisInputError, match="equivalence_scope='tasks'"):
        SilentZoneConfig(equivalence_scope="tasks")
