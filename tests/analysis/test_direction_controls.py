"""Direction that is not the score, failure-prediction controls and router baselines: against scipy/statsmodels, by
hand, and on simulations where what each statistic measures is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep

from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.controls import (
    bootstrap_weights,
    conditional_logit,
    failure_controls,
    stratified_mann_whitney,
    within_prompt_concordance,
)
from quantfid.analysis.direction import clopper_pearson, direction_table, newcombe_diff_ci
from quantfid.analysis.router_baselines import _boot, router_baselines

# ---------------------------------------------------------------- direction


def test_clopper_pearson_equals_scipy_exact():
    for k, n in ((0, 20), (3, 20), (20, 20), (17, 250)):
        ref = stats.binomtest(k, n).proportion_ci(method="exact")
        lo, hi = clopper_pearson(k, n)
        assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_newcombe_equals_statsmodels():
    for k1, n1, k2, n2 in ((12, 170, 30, 250), (0, 50, 4, 80), (9, 9, 1, 30)):
        lo, hi = newcombe_diff_ci(k1, n1, k2, n2)
        ref = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
        assert (float(lo), float(hi)) == pytest.approx(ref, abs=1e-10)


def _matrix(task, ref, quants):
    return TaskMatrix(task, np.arange(len(ref)).astype(str), np.array(ref, bool),
                      np.array([ref, *quants], bool), None)  # fmt: skip


def test_direction_table_by_hand():
    # reference passes 6 of 10 (a = 0.6); quant: lost 2 (of 6), gained 1 (of 4)
    ref = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    q = [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    d = direction_table(["q"], ["reference", "q"], {"t": _matrix("t", ref, [q])})
    assert d.at["q", "loss_rate.t"] == pytest.approx(2 / 6) and d.at["q", "gain_rate.t"] == pytest.approx(1 / 4)
    assert d.at["q", "balance.t"] == pytest.approx((1 - 2) / 3)
    assert d.at["q", "blind_expected_direction.t"] == pytest.approx(3 * (1 - 2 * 0.6))  # volume 3 x (1 - 2a)
    assert d.at["q", "excess.t"] == pytest.approx(-1 - 3 * (1 - 1.2))
    assert d.at["q", "balance.composite"] == d.at["q", "balance.t"]


def test_correctness_blind_flips_show_no_excess():
    """Flipping a random 20% of answers regardless of correctness: loss rate = gain rate, excess ~ 0, although the
    balance is negative (the reference passes most prompts, so more flips are losses)."""
    rng = np.random.default_rng(0)
    n, reps = 2000, 30
    ref = rng.random(n) < 0.7
    quants = [np.where(rng.random(n) < 0.2, ~ref, ref) for _ in range(reps)]
    d = direction_table([f"q{i}" for i in range(reps)], ["reference", *(f"q{i}" for i in range(reps))],
                        {"t": _matrix("t", ref, quants)})  # fmt: skip
    assert d["balance.composite"].mean() == pytest.approx(1 - 2 * ref.mean(), abs=0.03)
    assert abs(d["balance_excess.composite"].mean()) < 0.02
    covers = (d["gain_minus_loss_ci_low.composite"] <= 0) & (d["gain_minus_loss_ci_high.composite"] >= 0)
    assert covers.mean() >= 0.85


# ---------------------------------------------------------------- within-prompt comparison


def test_stratified_mann_whitney_one_stratum_equals_scipy():
    rng = np.random.default_rng(1)
    v = np.round(rng.normal(size=30), 1)  # ties
    pos = rng.random(30) < 0.4
    mw = stratified_mann_whitney(v[None], pos[None], ~pos[None])
    ref = stats.mannwhitneyu(v[pos], v[~pos], method="asymptotic", use_continuity=False)
    assert mw["u"][0] == pytest.approx(ref.statistic)
    z = (mw["u"][0] - mw["mean"][0]) / np.sqrt(mw["var"][0])
    assert 2 * stats.norm.sf(abs(z)) == pytest.approx(ref.pvalue, rel=1e-9)


def test_within_prompt_permutation_p_against_monte_carlo():
    rng = np.random.default_rng(2)
    p, q = 40, 12
    vals = rng.normal(size=(p, q))
    pos = rng.random((p, q)) < 0.3
    vals[pos] += 0.12
    res = within_prompt_concordance(vals, pos, ~pos, 0.95, 0, 0)
    u_obs = stratified_mann_whitney(vals, pos, ~pos)["u"].sum()
    perms = []
    for _ in range(1500):  # permute the values among quants within each prompt
        sh = np.take_along_axis(vals, np.argsort(rng.random((p, q)), axis=1), axis=1)
        perms.append(stratified_mann_whitney(sh, pos, ~pos)["u"].sum())
    perms = np.array(perms)
    mc = np.mean(np.abs(perms - perms.mean()) >= abs(u_obs - perms.mean()))
    assert 0.002 < mc < 0.2  # a moderate effect: the comparison is not decided at the edges
    assert res["p_permutation"] == pytest.approx(mc, abs=0.02)


def test_within_prompt_concordance_by_hand():
    # prompt 0: lost quant has KLD 3, kept quants 1 and 2 -> 2 of 2 pairs concordant; prompt 1: lost 1, kept 2 -> 0/1
    vals = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, np.nan]])
    pos = np.array([[True, False, False], [True, False, False]])
    neg = np.array([[False, True, True], [False, True, False]])
    r = within_prompt_concordance(vals, pos, neg, 0.95, 0, 0)
    assert r["value"] == pytest.approx(2 / 3) and r["n_pairs"] == 3 and r["n_prompts"] == 2


def test_bootstrap_weights_are_multinomial_counts():
    w = bootstrap_weights(7, 500, 3)
    assert w.shape == (500, 7) and (w.sum(axis=1) == 7).all()
    assert w.mean() == pytest.approx(1.0) and w.var() == pytest.approx(6 / 7, abs=0.08)


def test_conditional_logit_recovers_a_within_stratum_effect():
    rng = np.random.default_rng(4)
    strata = np.repeat(np.arange(300), 6)
    x = rng.normal(size=len(strata))
    alpha = rng.normal(0, 2, 300)[strata]  # stratum effects (prompt difficulty) that cancel in the conditional fit
    y = rng.random(len(strata)) < 1 / (1 + np.exp(-(alpha + 0.7 * x)))
    r = conditional_logit(y, x, strata)
    assert r["beta"] == pytest.approx(0.7, abs=0.2)
    assert r["or_per_doubling"] == pytest.approx(np.exp(r["beta"] * np.log(2)))
    assert r["or_ci_low"] < r["or_per_doubling"] < r["or_ci_high"] and r["p"] < 1e-6


def _difficulty_only_matrices(seed: int):
    """Per-prompt KLD depends on the prompt (hard prompts: higher KLD, more often failed) and on the quant's damage
    level, never on whether this quant fails this prompt beyond that: there is nothing per-prompt to predict."""
    rng = np.random.default_rng(seed)
    p, q = 400, 25
    hard = rng.random(p)  # prompt difficulty
    ref = rng.random(p) > hard * 0.8
    damage = np.geomspace(0.01, 0.4, q)
    lose = rng.random((q, p)) < damage[:, None] * (0.5 + hard[None, :])
    gain = rng.random((q, p)) < 0.3 * damage[:, None]
    passed = np.where(ref[None, :], ~lose, gain)
    kld = damage[:, None] * np.exp(1.5 * hard[None, :] + rng.normal(0, 0.5, (q, p)))
    allp = np.vstack([ref, passed])
    allk = np.vstack([np.zeros(p), kld])
    names = ["reference", *(f"q{i}" for i in range(q))]
    return names, {"t": TaskMatrix("t", np.arange(p).astype(str), ref, allp, allk)}


def test_controls_tell_difficulty_from_prediction():
    from quantfid.analysis.failure import failure_prediction

    names, m = _difficulty_only_matrices(0)
    quants = names[1:]
    fp = failure_prediction(quants, names, m, progress=False)["cohort"]
    fc = failure_controls(quants, names, m, n_boot=300, seed=0, max_clogit_cells=4000)["cohort"]
    assert fp["gm_ratio"]["value"] > 1.3  # the paper's statistic "predicts" failure...
    assert fc["gm_ratio_ref_difficulty"]["value"] > 1.3  # ...as much as difficulty alone does
    w = fc["within_prompt"]
    assert w["loss_raw"]["value"] > 0.6  # comparing quants on one prompt: damage still shows
    lo, hi = w["loss_centred"]["ci_low"], w["loss_centred"]["ci_high"]
    assert lo < 0.5 < hi  # relative to each quant's own level: nothing per-prompt (the truth)
    cl = fc["conditional_logit"]
    assert cl["or_ci_low"] < 1 < cl["or_ci_high"]


def test_controls_find_real_per_prompt_prediction():
    names, m = _difficulty_only_matrices(1)
    t = m["t"]
    failed = ~t.passed[1:]
    t.kld[1:] = t.kld[1:] * np.where(failed, 3.0, 1.0)  # now a failed prompt carries 3x the KLD: real signal
    fc = failure_controls(names[1:], names, m, n_boot=300, seed=0, max_clogit_cells=4000)["cohort"]
    assert fc["within_prompt"]["loss_centred"]["ci_low"] > 0.6
    assert fc["conditional_logit"]["or_ci_low"] > 1.2


# ---------------------------------------------------------------- router baselines


def test_router_rules_by_hand():
    ref = np.array([1, 1, 0, 0, 1], bool)
    pa = np.array([1, 0, 1, 0, 1], bool)  # quant a: accuracy 3/5
    pb = np.array([0, 1, 0, 1, 1], bool)  # quant b: accuracy 3/5
    ka = np.array([0.1, 0.9, 0.2, 0.3, 0.5])  # median 0.3
    kb = np.array([0.2, 0.1, 0.4, 0.1, 0.5])  # median 0.2
    m = TaskMatrix("t", np.arange(5).astype(str), ref, np.stack([ref, pa, pb]), np.stack([np.zeros(5), ka, kb]))
    r = router_baselines(["a", "b"], ["reference", "a", "b"], {"t": m}, n_boot=0)
    e = r["groups"]["all"]["all prompts"]
    # decisions on prompts 0-3; kld picks a, b, a, b: right, right, right, right
    assert e["n_decisions"] == 4 and e["kld"]["value"] == 1.0
    assert e["global_kld"]["value"] == pytest.approx(2 / 4)  # always b (lower median): right on prompts 1 and 3
    assert e["global_score"]["value"] == pytest.approx(0.5)  # equal accuracy: a tie on every decision counts 1/2
    assert r["groups"]["all"]["reference passed"]["n_decisions"] == 2


def test_router_bootstrap_ci_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(5)
    d = rng.integers(1, 9, 200).astype(float)
    c = rng.binomial(d.astype(int), 0.6).astype(float)
    ours = _boot(c, d, bootstrap_weights(200, 4000, 1), 0.95, 0.5)
    ref = stats.bootstrap((c, d), lambda c, d, axis=-1: c.sum(axis=axis) / d.sum(axis=axis), paired=True,
                          vectorized=True, n_resamples=4000, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval  # fmt: skip
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.006) and ours["ci_high"] == pytest.approx(ref.high, abs=0.006)
    assert ours["p"] < 0.01  # 0.6 vs 0.5 on ~900 decisions


def test_router_measures_global_quality_when_kld_has_no_per_prompt_information():
    names, m = _difficulty_only_matrices(2)
    r = router_baselines(names[1:], names, m, n_boot=300, seed=0)
    e = r["groups"]["all"]["all prompts"]
    assert e["kld"]["value"] > 0.6  # looks like a working router...
    assert abs(e["kld_minus_global_kld"]["value"]) < 0.05  # ...but so does always picking the better quant
    assert e["demeaned"]["ci_low"] < 0.5 < e["demeaned"]["ci_high"]  # per-prompt information only: chance


def test_tie_term_equals_a_row_by_row_count():
    from quantfid.analysis.controls import tie_term

    rng = np.random.default_rng(6)
    v = np.round(rng.normal(size=(40, 25)), 1)
    v[rng.random(v.shape) < 0.3] = np.nan
    r = stats.rankdata(v, axis=1, nan_policy="omit")
    want = []
    for row in r:
        _, c = np.unique(row[np.isfinite(row)], return_counts=True)
        want.append(float((c.astype(float) ** 3 - c).sum()))
    np.testing.assert_allclose(tie_term(r), want)
    assert max(want) > 0  # the data do have ties
