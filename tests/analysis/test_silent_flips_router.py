"""Hand-computed small examples: silent zone (McNemar + Holm/BH, CI overlap, delta band), volume/direction, router,
failure prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from quantfid.analysis import AnalysisConfig, AnalysisInputError, Cohort, SilentZoneConfig, analyze
from quantfid.analysis.cohort import TaskMatrix
from quantfid.analysis.failure import failure_prediction
from quantfid.analysis.flips import flip_counts, volume_direction
from quantfid.analysis.router import _unrank_pair, prompt_bootstrap_ci, router_accuracy
from quantfid.analysis.silent import silent_zone

REF = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # task t1: the reference passes 6 of 10
QUANTS = {
    "reference": REF,
    "qA": REF,  # identical: lost 0, gained 0, p = 1
    "qB": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # lost 6, gained 0: p = 2 * 0.5^6 = 0.03125
    "qC": [0, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # lost 1, gained 1: p = 1
    "qD": [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # lost 5, gained 0: p = 0.0625
}


def hand_cohort() -> Cohort:
    rows = []
    for q, out in QUANTS.items():
        for task in ("t1", "t2"):
            vals = out if task == "t1" else REF  # task t2: every quant reproduces the reference
            for j, v in enumerate(vals):
                rows.append({"quant": q, "task": task, "prompt_id": f"p{j}", "passed": bool(v),
                             "kld_completion": 0.1 * (j + 1) * (1 + list(QUANTS).index(q))})  # fmt: skip
    outcomes = pd.DataFrame(rows)
    acc = outcomes.groupby(["quant", "task"])["passed"].mean().unstack()
    table = pd.DataFrame({"kld_mean": [0.0, 0.01, 0.5, 0.05, 0.3]}, index=list(QUANTS))
    table["score.t1"], table["score.t2"] = acc["t1"], acc["t2"]
    table["score.composite"] = outcomes.groupby("quant")["passed"].mean()
    table["n.t1"] = table["n.t2"] = 10
    return Cohort(table, ["kld_mean"], ["t1", "t2"], "reference", outcomes)


def test_mcnemar_zone_hand_values_holm_all_scope():
    zone, method = silent_zone(hand_cohort(), SilentZoneConfig(method="mcnemar", correction="holm", scope="all"))
    assert method == "mcnemar"
    assert zone.loc["qB", ["lost.t1", "gained.t1"]].tolist() == [6, 0]
    assert zone.at["qB", "p.t1"] == pytest.approx(0.03125)
    assert zone.at["qD", "p.t1"] == pytest.approx(0.0625)
    # Holm over the 8 quant x task tests: 0.03125 * 8 = 0.25, then max(0.25, 0.0625 * 7) = 0.4375
    assert zone.at["qB", "p_adj.t1"] == pytest.approx(0.25)
    assert zone.at["qD", "p_adj.t1"] == pytest.approx(0.4375)
    assert zone["silent"].all()


def test_mcnemar_zone_task_scope_and_no_correction():
    zone, _ = silent_zone(hand_cohort(), SilentZoneConfig(method="mcnemar", correction="holm", scope="task"))
    assert zone.at["qB", "p_adj.t1"] == pytest.approx(0.125)  # 4 tests in task t1
    assert zone.at["qD", "p_adj.t1"] == pytest.approx(0.1875)
    zone, _ = silent_zone(hand_cohort(), SilentZoneConfig(method="mcnemar", correction="none"))
    assert zone["silent"].to_dict() == {"qA": True, "qB": False, "qC": True, "qD": True}
    zone, _ = silent_zone(hand_cohort(), SilentZoneConfig(method="mcnemar", correction="bh", alpha=0.3, scope="task"))
    # BH in task t1: sorted p (0.03125, 0.0625, 1, 1) -> (0.125, 0.125, 1, 1): qB and qD differ at alpha 0.3
    assert zone.at["qB", "p_adj.t1"] == pytest.approx(0.125)
    assert zone.at["qD", "p_adj.t1"] == pytest.approx(0.125)
    assert zone["silent"].to_dict() == {"qA": True, "qB": False, "qC": True, "qD": False}


def scores_cohort() -> Cohort:
    table = pd.DataFrame(
        {"kld": [0.0, 0.01, 0.3, 0.05], "score.composite": [0.5, 0.5, 0.3, 0.45], "n.composite": [100] * 4},
        index=["reference", "q1", "q2", "q3"],
    )
    return Cohort(table, ["kld"], [], "reference")


def test_ci_overlap_and_delta_zones():
    # Wilson 95%: 50/100 -> [0.404, 0.596]; 30/100 -> [0.219, 0.396] (disjoint); 45/100 -> [0.356, 0.548]
    zone, method = silent_zone(scores_cohort(), SilentZoneConfig(method="ci_overlap"))
    assert method == "ci_overlap"
    assert zone["silent"].to_dict() == {"q1": True, "q2": False, "q3": True}
    zone, _ = silent_zone(scores_cohort(), SilentZoneConfig(method="delta", band=0.02))
    assert zone["silent"].to_dict() == {"q1": True, "q2": False, "q3": False}
    zone, _ = silent_zone(scores_cohort(), SilentZoneConfig(method="delta", band=0.06))
    assert zone["silent"].to_dict() == {"q1": True, "q2": False, "q3": True}
    with pytest.raises(AnalysisInputError, match="needs per-prompt outcomes"):
        silent_zone(scores_cohort(), SilentZoneConfig(method="mcnemar"))


def test_bad_silent_config_is_a_clear_error():
    with pytest.raises(AnalysisInputError, match="method='exact'"):
        SilentZoneConfig(method="exact")
    with pytest.raises(AnalysisInputError, match=r"alpha=1\.5"):
        SilentZoneConfig(alpha=1.5)


def test_volume_direction_hand_values_and_identity():
    c = hand_cohort()
    m = c.task_matrices()
    f = volume_direction(c.quants, list(c.table.index), m)
    assert f.loc["qB", ["lost.t1", "gained.t1", "volume.t1", "direction.t1"]].tolist() == [6, 0, 6, -6]
    assert f.loc["qC", ["lost.t1", "gained.t1", "volume.t1", "direction.t1"]].tolist() == [1, 1, 2, 0]
    assert f.loc["qD", ["volume.composite", "direction.composite"]].tolist() == [5, -5]
    # direction summed over prompts = n x accuracy change
    for q in c.quants:
        assert f.at[q, "direction.t1"] == pytest.approx(
            10 * (c.table.at[q, "score.t1"] - c.table.at["reference", "score.t1"])
        )
    assert flip_counts(REF, QUANTS["qC"]) == (1, 1)


def test_router_hand_example():
    pa, pb = np.array([1, 0, 1, 1, 0]), np.array([0, 1, 1, 0, 1])
    ka, kb = np.array([0.1, 0.5, 0.2, 0.3, 0.1]), np.array([0.2, 0.1, 0.3, 0.3, 0.4])
    # exactly one passes on prompts 0, 1, 3, 4: prompt 0 pick a (right), 1 pick b (right), 3 tie (left out),
    # 4 pick a (wrong: b passed) -> 2 of 3
    m = TaskMatrix("t", np.arange(5).astype(str), np.ones(5, bool), np.stack([pa, pb]).astype(bool), np.stack([ka, kb]))
    r = router_accuracy(["a", "b"], ["a", "b"], {"t": m})
    assert r["n_decisions"] == 3
    assert r["n_ties"] == 1
    assert r["accuracy"]["value"] == pytest.approx(2 / 3)
    assert r["accuracy"]["ci_low"] < 2 / 3 < r["accuracy"]["ci_high"]
    boot = r["accuracy_prompt_bootstrap"]
    assert boot["value"] == pytest.approx(2 / 3) and boot["n_prompts"] == 3


def test_prompt_bootstrap_ci_widens_when_decisions_share_prompts():
    # 10 prompts x 50 pairs: every pair decides the same way on a prompt (5 prompts right, 5 wrong). The binomial CI
    # sees 500 independent decisions; the honest unit is the prompt.
    correct = np.array([50] * 5 + [0] * 5)
    decided = np.full(10, 50)
    boot = prompt_bootstrap_ci(correct, decided, 0.95, 2000, 0)
    from quantfid.analysis.stats import binomial_estimate

    binom = binomial_estimate(int(correct.sum()), int(decided.sum()))
    assert boot["value"] == binom.value == 0.5
    assert boot["ci_low"] < 0.5 < boot["ci_high"]
    assert boot["ci_high"] - boot["ci_low"] > 4 * (binom.ci_high - binom.ci_low)


def test_prompt_bootstrap_ci_against_an_independent_resampling():
    rng = np.random.default_rng(3)
    decided = rng.integers(0, 12, 300)
    correct = rng.binomial(decided, rng.uniform(0.2, 0.8, 300))
    boot = prompt_bootstrap_ci(correct, decided, 0.9, 4000, 0)
    keep = decided > 0
    c, d = correct[keep], decided[keep]
    idx = np.random.default_rng(11).integers(0, len(c), (4000, len(c)))
    acc = c[idx].sum(1) / d[idx].sum(1)
    lo, hi = np.percentile(acc, [5, 95])
    assert boot["value"] == pytest.approx(correct.sum() / decided.sum())
    assert boot["n_prompts"] == int(keep.sum())
    assert boot["ci_low"] == pytest.approx(lo, abs=0.006) and boot["ci_high"] == pytest.approx(hi, abs=0.006)


def test_unrank_pair_enumerates_combinations():
    import itertools

    n = 7
    assert [_unrank_pair(k, n) for k in range(21)] == list(itertools.combinations(range(n), 2))


def test_failure_prediction_per_quant_matches_direct_computation():
    c = hand_cohort()
    m = c.task_matrices("kld_completion")
    fp = failure_prediction(c.quants, list(c.table.index), m, progress=False)
    qi = list(c.table.index).index("qD")
    passed = np.concatenate([m["t1"].passed[qi], m["t2"].passed[qi]])
    kld = np.concatenate([m["t1"].kld[qi], m["t2"].kld[qi]])
    gm = np.exp(np.log(kld[~passed]).mean() - np.log(kld[passed]).mean())
    assert fp["per_quant"].at["qD", "gm_ratio"] == pytest.approx(gm)
    assert fp["per_quant"].at["qD", "auroc"] == pytest.approx(roc_auc_score(~passed, kld))


def test_analyze_hand_cohort_end_to_end_in_memory():
    res = analyze(hand_cohort(), AnalysisConfig(n_boot=100, progress=False))
    s = res.summary
    assert s["silent_zone"]["method"] == "equivalence"
    # 10 prompts per task: no quant can be shown within +-0.02 (a CI with no flip is +-0.28); qB (6 of 10 lost on
    # t1) differs; the paper-style zone keeps all four (Holm over 8 tests)
    assert s["silent_zone"]["n_full"] == 4 and s["silent_zone"]["n_silent"] == 0
    assert s["equivalence"]["groups"]["different"] == ["qB"]
    assert s["paper_zone"]["n_silent"] == 4
    full = next(r for r in s["correlations"] if r["zone"] == "full" and r["target"] == "volume.composite")
    # kld_mean ranks (qA .01, qB .5, qC .05, qD .3) vs volume (0, 6, 2, 5): identical order -> rho = 1
    assert full["rho"] == pytest.approx(1.0)
    assert s["volume_direction"]["direction_identity_max_abs_error"] == pytest.approx(0.0, abs=1e-9)


def test_cohort_input_errors():
    c = hand_cohort()
    with pytest.raises(AnalysisInputError, match="lacks 1 of the reference's 10 prompts"):
        Cohort(c.table, c.variants, c.tasks, "reference", c.outcomes.drop(index=20)).task_matrices()
    with pytest.raises(AnalysisInputError, match="at least 3 quants"):
        Cohort(c.table.iloc[:3], c.variants, c.tasks, "reference")
    with pytest.raises(AnalysisInputError, match="reference 'base' is not a quant"):
        Cohort(c.table, c.variants, c.tasks, "base")
    with pytest.raises(AnalysisInputError, match="no fidelity variant"):
        Cohort(c.table, [], c.tasks, "reference")
    with pytest.raises(AnalysisInputError, match="primary variant 'nope'"):
        analyze(c, AnalysisConfig(primary_variant="nope", n_boot=0, progress=False))


def test_variant_selection():
    from quantfid.analysis.analyze import select_variants

    avail = [
        "kld_mean@code.256",
        "kld_mean_se@code.256",
        "kld_mean@prose.256",
        "top1_agree@code.256",
        "n_tokens@code.256",
    ]
    assert select_variants(avail, "all") == ["kld_mean@code.256", "kld_mean@prose.256", "top1_agree@code.256"]
    assert select_variants(avail, "kld_mean") == ["kld_mean@code.256", "kld_mean@prose.256"]
    assert select_variants(avail, "top1_agree@code.256,kld_mean@code.256") == [
        "top1_agree@code.256",
        "kld_mean@code.256",
    ]
    with pytest.raises(AnalysisInputError, match="are not in the cohort"):
        select_variants(avail, "paper14")


def test_empty_silent_zone_gives_undefined_correlations_and_a_note():
    table = pd.DataFrame(
        {"kld": [0, 0.1, 0.2, 0.3], "score.composite": [0.9, 0.5, 0.4, 0.3], "n.composite": [1000] * 4},
        index=["reference", "a", "b", "c"],
    )
    cfg = AnalysisConfig(n_boot=50, progress=False, silent=SilentZoneConfig(method="delta", band=0.01))
    res = analyze(Cohort(table, ["kld"], [], "reference"), cfg)
    assert res.summary["silent_zone"]["n_silent"] == 0
    silent = [r for r in res.summary["correlations"] if r["zone"] == "silent"]
    assert silent and all(r["rho"] is None and r["n"] == 0 for r in silent)
    assert any("silent zone holds 0" in n for n in res.summary["notes"])
