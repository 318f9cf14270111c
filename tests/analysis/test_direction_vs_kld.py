"""The pre-registered comparison on synthetic cohorts where the truth is known: a metric built to carry direction
beats KLD inside the zone, one built to carry only volume does not; the prompt-level paired AUROC likewise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from quantfid.analysis.analyze import AnalysisConfig, analyze
from quantfid.analysis.cohort import Cohort
from quantfid.analysis.direction_vs_kld import BEATS, NO_EVIDENCE, WORSE, direction_vs_kld, weighted_auroc
from quantfid.analysis.report import write_report
from quantfid.analysis.silent import SilentZoneConfig
from quantfid.analysis.synthetic import make_flip_cohort
from quantfid.api.variants import PRIMARY_VARIANT, calibration_variant_name

DIR = calibration_variant_name("dir_tf_netflip")
VOL = calibration_variant_name("dir_confident_disagree")
CTL = calibration_variant_name("ctl_kld_refcont")
A = 0.6  # reference accuracy


def _cohort(seed: int = 0, n_quants: int = 30, n_prompts: int = 1500) -> Cohort:
    rng = np.random.default_rng(seed)
    rates, metrics = {}, {}
    for i in range(n_quants):
        volume = rng.uniform(0.005, 0.03)  # near-baseline: flip rates of a few percent, direction varies freely
        share = rng.uniform(0.0, 1.0)  # how much of the volume is losses
        lo, ga = volume * share / A, volume * (1 - share) / (1 - A)
        true_diff = (1 - A) * ga - A * lo
        q = f"q{i:02d}"
        rates[q] = (lo, ga)
        vol_noise = volume * rng.lognormal(0, 0.1)
        metrics[q] = {
            PRIMARY_VARIANT: vol_noise,  # KLD: volume only
            DIR: true_diff + rng.normal(0, 0.002),  # built to carry direction
            VOL: volume * rng.lognormal(0, 0.1),  # built to carry only volume
            CTL: volume * rng.lognormal(0, 0.1),
        }
    metrics["reference"] = {PRIMARY_VARIANT: 0.0, DIR: 0.0, VOL: 0.0, CTL: 0.0}
    coh = make_flip_cohort(rates, n_prompts=n_prompts, ref_accuracy=A, metrics=metrics, seed=seed)
    # per-prompt label-free columns: one carries the flip's direction, the KLD and the JS control only "changed"
    o = coh.outcomes.copy()
    ref = o[o.quant == "reference"].set_index(["task", "prompt_id"])["passed"]
    r = ref.loc[list(zip(o.task, o.prompt_id, strict=True))].to_numpy()
    lost, gained = r & ~o.passed.to_numpy(), ~r & o.passed.to_numpy()
    noise = rng.normal(0, 1, len(o))
    changed = (lost | gained).astype(float)
    o["kld_completion"] = np.exp(0.8 * changed + noise)
    o["dir_expected_netflip"] = 1.5 * gained - 1.5 * lost + rng.normal(0, 1, len(o))
    o["dir_confident_disagree"] = (rng.random(len(o)) < 0.1 + 0.1 * changed).astype(float)
    o["ctl_js_refcont"] = np.exp(0.8 * changed + rng.normal(0, 1, len(o)))
    return Cohort(coh.table, coh.variants, coh.tasks, coh.reference, o, coh.source)


@pytest.fixture(scope="module")
def result():
    coh = _cohort(n_quants=40, n_prompts=2000)
    cfg = SilentZoneConfig(method="equivalence", delta=0.02)
    return direction_vs_kld(coh, coh.task_matrices("kld_completion"), cfg, PRIMARY_VARIANT, n_splits=4, n_boot=300)


def test_direction_carrier_beats_kld_and_volume_carrier_does_not(result):
    rows = {r["metric"]: r for r in result["cohort"]}
    assert result["zone"]["n_quants"] >= 20
    assert rows[DIR]["verdict"] == BEATS and rows[DIR]["d"] > 0.2 and rows[DIR]["ci_low"] > 0
    assert rows[VOL]["verdict"] in (NO_EVIDENCE, WORSE) and rows[VOL]["ci_low"] < 0.1
    assert rows[DIR]["in_holm_family"] and not rows[CTL]["in_holm_family"]
    assert rows[DIR]["p_holm"] >= rows[DIR]["p"]
    assert 0 <= rows[DIR]["noise_ceiling_cf"] <= 1
    assert result["verdicts"][DIR] == BEATS
    assert calibration_variant_name("beh_net_rate") in result["not_measured"]


def test_prompt_level_direction_carrier_beats_kld_for_losses_and_gains(result):
    prm = pd.DataFrame(result["prompt"])
    net = prm[prm.metric == "dir_expected_netflip"].set_index("outcome")
    assert (net["verdict"] == BEATS).all() and (net["ci_low"] > 0).all()
    js = prm[prm.metric == "ctl_js_refcont"]
    assert js["control"].all() and (js["ci_low"] < 0).all() and (js["ci_high"] > 0).all()


def test_weighted_auroc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=300), 1)  # ties
    y = rng.random(300) < 0.3 + 0.2 * (s > 0)
    u = stats.mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum())
    assert weighted_auroc(s, y, np.ones((1, 300)))[0] == pytest.approx(u)
    w = rng.integers(0, 3, 300)  # integer weights = repeating cells
    rep_s, rep_y = np.repeat(s, w), np.repeat(y, w)
    u_w = stats.mannwhitneyu(rep_s[rep_y], rep_s[~rep_y]).statistic / (rep_y.sum() * (~rep_y).sum())
    assert weighted_auroc(s, y, w[None].astype(float))[0] == pytest.approx(u_w)


def test_the_section_is_in_the_summary_and_report_and_absent_without_direction_metrics(tmp_path):
    coh = _cohort(seed=1, n_quants=12, n_prompts=300)
    truth = pd.Series({q: float(coh.table.at[q, DIR]) for q in coh.quants})  # a noise-free score ranking
    res = analyze(coh, AnalysisConfig(n_boot=50, crossfit_splits=2, reliability_splits=4, progress=False), truth)
    sec = res.summary["direction_vs_kld"]
    assert sec["baseline"] == PRIMARY_VARIANT and {r["metric"] for r in sec["cohort"]} >= {DIR, VOL, CTL}
    truth_rows = {r["metric"]: r for r in sec["truth"]["rows"]}
    assert truth_rows[DIR]["abs_rho_metric"] == pytest.approx(1.0)
    paths = write_report(res, tmp_path)
    text = paths["report"].read_text() if "report" in paths else (tmp_path / "report.html").read_text()
    assert "Direction-aware metrics against KLD (pre-registered)" in text and DIR in text
    assert json.loads((tmp_path / "summary.json").read_text())["direction_vs_kld"]["baseline"] == PRIMARY_VARIANT
    plain = make_flip_cohort({f"q{i}": (0.01 * i, 0.01) for i in range(5)}, n_prompts=100)
    assert analyze(plain, AnalysisConfig(n_boot=20, crossfit_splits=2, reliability_splits=4,
                                         progress=False)).summary["direction_vs_kld"] is None  # fmt: skip


def test_zone_rule_equals_the_equivalence_verdicts_with_tango_cis():
    from quantfid.analysis.direction_vs_kld import not_different
    from quantfid.analysis.equivalence import combine_verdicts, holm_rows, tango_ci, tango_p0, unit_verdicts

    rng = np.random.default_rng(5)
    q, tasks = 400, ["t1", "t2"]
    counts = {}
    for u in ["composite", *tasks]:
        n = np.full(q, 3000.0 if u != "composite" else 6000.0)
        counts[f"n.{u}"] = n
        counts[f"gained.{u}"] = rng.integers(0, 120, q).astype(float)
        counts[f"lost.{u}"] = rng.integers(0, 120, q).astype(float)
    cfg = SilentZoneConfig(method="equivalence", delta=0.03)
    g, lo_, n = (np.stack([counts[f"{k}.{u}"] for u in ["composite", *tasks]], axis=1) for k in ("gained", "lost", "n"))
    lo, hi = tango_ci(g, lo_, n, cfg.level)
    expected = combine_verdicts(unit_verdicts(lo, hi, holm_rows(tango_p0(g, lo_)), cfg.delta, cfg.alpha))
    got = not_different(counts, tasks, cfg)
    assert (got == (expected != "different")).all()
    assert (expected == "equivalent").sum() > 0 and (expected == "different").sum() > 0
