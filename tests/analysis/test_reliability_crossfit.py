"""Split-half reliability and the noise ceiling; cross-fitting removes the selection bias of a zone chosen on the
same outcomes it is measured on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from quantfid.analysis import SilentZoneConfig
from quantfid.analysis.crossfit import crossfit, rho_matrix
from quantfid.analysis.direction import direction_table
from quantfid.analysis.reliability import (
    half_masks,
    prompt_layout,
    rowwise_spearman,
    spearman_brown,
    split_half_reliability,
    targets_on,
)
from quantfid.analysis.silent import silent_zone
from quantfid.analysis.synthetic import make_flip_cohort


def test_rowwise_spearman_matches_scipy_with_gaps():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    y[1, :5] = np.nan
    x[2, 3] = np.inf
    got = rowwise_spearman(x, y)
    for i in range(4):
        ok = np.isfinite(x[i]) & np.isfinite(y[i])
        assert got[i] == pytest.approx(stats.spearmanr(x[i, ok], y[i, ok]).statistic, abs=1e-12)
    assert np.isnan(rowwise_spearman(np.ones((1, 5)), np.arange(5.0)[None]))[0]


def test_rho_matrix_matches_pairwise_spearman():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 25)), rng.normal(size=(4, 25))
    y[2, [0, 7]] = np.nan
    x[1, 4] = np.nan
    m = rho_matrix(x, y)
    for i in range(3):
        for j in range(4):
            ok = np.isfinite(x[i]) & np.isfinite(y[j])
            assert m[i, j] == pytest.approx(stats.spearmanr(x[i, ok], y[j, ok]).statistic, abs=1e-12)


def test_spearman_brown_by_hand():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.2) == pytest.approx(0.4 / 1.2)
    assert spearman_brown(0.5, factor=0.5) == pytest.approx(1 / 3)  # and back down: half as long


def test_half_masks_are_stratified_seeded_and_quarters_nest():
    task_of = np.repeat([0, 1, 2], [10, 11, 7])
    m = half_masks(task_of, 5, seed=3)
    assert m.shape == (5, 28)
    for t, k in ((0, 10), (1, 11), (2, 7)):
        assert (m[:, task_of == t].sum(axis=1) == k // 2).all()
    assert (half_masks(task_of, 5, seed=3) == m).all() and not (half_masks(task_of, 5, seed=4) == m).all()
    q = half_masks(task_of, 5, seed=9, within=m)
    assert not (q & ~m).any() and (q.sum(axis=1) == sum(((k // 2) // 2) for k in (10, 11, 7))).all()


def test_targets_on_match_a_direct_count():
    c = make_flip_cohort({"a": (0.2, 0.1), "b": (0.05, 0.3), "c": (0.0, 0.0)}, n_prompts=50, seed=2)
    lay = prompt_layout(c.quants, list(c.table.index), c.task_matrices(None))
    mask = half_masks(lay.task_of, 1, seed=0)
    t = targets_on(lay, mask)
    sel = mask[0]
    for qi in range(3):
        q, r = lay.passed[qi, sel], lay.ref[sel]
        lost, gained = int((r & ~q).sum()), int((~r & q).sum())
        assert t["score.composite"][0, qi] == pytest.approx(q.mean())
        assert t["volume.composite"][0, qi] == lost + gained
        assert t["direction.composite"][0, qi] == gained - lost
        assert t["balance.composite"][0, qi] == pytest.approx((gained - lost) / (lost + gained) if lost + gained else 0)
        s1 = sel & (lay.task_of == 0)
        assert t["score.t1"][0, qi] == pytest.approx(lay.passed[qi, s1].mean())


def _graded_cohort(spread: float, n_prompts: int, seed: int, n_q: int = 30):
    """Quants whose true accuracy differences are spread over [-spread, 0] (loss rates), with 5% background flips."""
    a = 0.6
    drops = np.linspace(0, spread, n_q)
    rates = {f"q{i:02d}": (0.05 / a / 2 + d / a, 0.05 / (1 - a) / 2) for i, d in enumerate(drops)}
    return make_flip_cohort(rates, n_prompts=n_prompts, ref_accuracy=a, seed=seed), -drops


def test_noise_ceiling_predicts_what_a_perfect_metric_shows():
    """Against the observed (noisy) score, a metric equal to the true accuracy difference shows |rho| about the
    noise ceiling; a well-separated cohort has a high ceiling, a near-identical one a low ceiling."""
    for spread, lo_c, hi_c in ((0.15, 0.9, 1.0), (0.02, 0.0, 0.75)):
        ceilings, perfect = [], []
        for seed in range(6):
            c, truth = _graded_cohort(spread, 150, seed)
            m = c.task_matrices(None)
            lay = prompt_layout(c.quants, list(c.table.index), m)
            half = targets_on(lay, half_masks(lay.task_of, 60, seed))
            full = targets_on(lay, np.ones((1, lay.n_prompts), dtype=bool))
            rel = split_half_reliability(half, full, np.ones(len(c.quants), bool), ["score.composite"])
            ceilings.append(rel["score.composite"]["noise_ceiling"])
            perfect.append(stats.spearmanr(truth, c.table.loc[c.quants, "score.composite"]).statistic)
        assert lo_c <= np.mean(ceilings) <= hi_c
        assert np.mean(perfect) == pytest.approx(np.mean(ceilings), abs=0.12)


def _volume_only_cohort(seed: int, n_q: int = 400):
    """Every quant's flips are losses with probability 0.7 (balance -0.4 for all: balance carries nothing to find);
    volumes differ. The metric tracks volume (10% noise): it is pure noise with respect to balance."""
    rng = np.random.default_rng(seed)
    a = 0.6
    vol = rng.uniform(0.05 / 8, 0.05, n_q)
    rates = {f"q{i:03d}": (0.7 * v / a, 0.3 * v / (1 - a)) for i, v in enumerate(vol)}
    metrics = {q: {"m": v * rng.lognormal(0, 0.1)} for q, v in zip(rates, vol, strict=True)} | {"reference": {"m": 0}}
    return make_flip_cohort(rates, tasks=("t1", "t2"), n_prompts=1000, ref_accuracy=a, metrics=metrics, seed=seed)


@pytest.mark.slow
def test_crossfitting_removes_a_spurious_in_zone_correlation():
    """Selection on the outcome: the McNemar zone keeps |gained - lost| < ~2 sqrt(volume), so among its high-volume
    members only those whose balance happened to be near 0 stay: within the zone a volume-tracking metric (pure
    noise with respect to balance, whose truth is -0.4 for every quant) correlates positively with the balance
    measured on the same outcomes. Decided on one half of the prompts and measured on the other, it does not.
    (A metric independent of every outcome cannot pick up such a correlation at all: the bias acts through what the
    metric tracks.)"""
    cfg = SilentZoneConfig(method="mcnemar", correction="none")
    full_rho, cf_rho, cf_p, cf_score = [], [], [], []
    for seed in range(3):
        c = _volume_only_cohort(seed)
        m = c.task_matrices(None)
        zone, _ = silent_zone(c, cfg, m)
        inz = zone["silent"].to_numpy()
        assert 60 < inz.sum() < 300
        x = c.table.loc[c.quants, "m"].to_numpy(float)
        bal = direction_table(c.quants, list(c.table.index), m)["balance.composite"].to_numpy()
        full_rho.append(stats.spearmanr(x[inz], bal[inz]).statistic)
        lay = prompt_layout(c.quants, list(c.table.index), m)
        cf = crossfit(lay, x[None], ["m"], ["balance.composite", "score.composite"], {"paper": ("mcnemar", cfg)},
                      n_splits=10, seed=seed).set_index("target")  # fmt: skip
        cf_rho.append(cf.at["balance.composite", "rho_cf"])
        cf_p.append(cf.at["balance.composite", "p"])
        cf_score.append(cf.at["score.composite", "rho_cf"])
    # spurious without cross-fitting (the truth is no relation at all): positive in every cohort, +0.2 on average
    assert min(full_rho) > 0.1 and np.mean(full_rho) > 0.2
    # gone with it
    assert abs(np.mean(cf_rho)) < 0.06 and min(cf_p) > 0.05
    # while the real relation (more flips at a fixed balance: a lower score) survives cross-fitting
    assert max(cf_score) < -0.5


def test_zone_from_counts_equals_the_full_sample_zones():
    """The fold zones use the same rules as the full-sample ones: on all prompts they agree quant for quant."""
    from dataclasses import replace

    from quantfid.analysis.crossfit import zone_from_counts

    rates = {f"q{i}": (lo, ga) for i, (lo, ga) in enumerate([(0.0, 0.0), (0.01, 0.02), (0.05, 0.05), (0.1, 0.02),
                                                              (0.3, 0.05), (0.02, 0.0), (0.15, 0.15)])}  # fmt: skip
    c = make_flip_cohort(rates, tasks=("t1", "t2", "t3"), n_prompts=300, seed=4)
    m = c.task_matrices(None)
    lay = prompt_layout(c.quants, list(c.table.index), m)
    counts = {k: v[0] for k, v in targets_on(lay, np.ones((1, lay.n_prompts), dtype=bool)).items()}
    ref_counts = {t: (float(m[t].ref_passed.sum()), float(len(m[t].ref_passed))) for t in lay.tasks}
    configs = [SilentZoneConfig(method="equivalence", delta=0.03), SilentZoneConfig(method="equivalence",
               delta=0.03, equivalence_scope="composite"), SilentZoneConfig(method="mcnemar"),
               SilentZoneConfig(method="mcnemar", correction="none", scope="task"),
               SilentZoneConfig(method="delta", band=0.03), SilentZoneConfig(method="ci_overlap")]  # fmt: skip
    seen = set()
    for cfg in configs:
        zone, method = silent_zone(c, cfg, m)
        got = zone_from_counts(method, replace(cfg), counts, ref_counts, lay.tasks)
        assert got.tolist() == zone["silent"].tolist(), cfg
        seen.add(tuple(got))
    assert len(seen) >= 3  # the configurations really differ on this cohort
