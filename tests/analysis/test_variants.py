"""Variant families (rank-equivalence detected from the data), the explicit primary variant, BH over the grid, and
the report/summary that put the answer first."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from quantfid.analysis import AnalysisConfig, AnalysisInputError, analyze
from quantfid.analysis.synthetic import make_synthetic_cohort, to_cohort
from quantfid.analysis.variants import (
    DEFAULT_PRIMARY,
    bh_over_families,
    families_summary,
    resolve_primary,
    variant_families,
)


def _table() -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(0)
    n = 12
    ppl = 5 + rng.uniform(0, 2, n)
    kld = rng.uniform(0.001, 0.3, n)
    t = pd.DataFrame({
        "ppl_quant@code.256": ppl, "ppl_ratio@code.256": ppl / 5.0, "ln_ppl_ratio@code.256": np.log(ppl / 5.0),
        "ppl_diff@code.256": ppl - 5.0, "kld_mean@code.256": kld,
        "kld_seqmean@code.256": kld * (1 + 1e-16 * rng.normal(size=n)),  # equal up to float rounding
        "top1_agree@code.256": 1 - kld / 2,  # exactly reversed ranks
        "kld_p99@code.256": rng.uniform(0, 1, n),  # its own ranking
        "kld_max@code.256": np.ones(n),  # constant: not comparable
    }, index=[f"q{i}" for i in range(n)])  # fmt: skip
    return t, list(t.columns)


def test_rank_equivalent_variants_form_families_with_reasons():
    t, v = _table()
    fam = variant_families(t, v, list(t.index), DEFAULT_PRIMARY)
    assert fam.loc[["ppl_quant@code.256", "ppl_ratio@code.256", "ln_ppl_ratio@code.256", "ppl_diff@code.256"],
                   "family"].nunique() == 1  # fmt: skip
    assert "monotone transforms" in fam.at["ppl_ratio@code.256", "reason"]
    assert "not identical by construction" not in fam.at["ppl_ratio@code.256", "reason"]
    kf = fam.loc[["kld_mean@code.256", "kld_seqmean@code.256", "top1_agree@code.256"]]
    assert (kf["family"] == DEFAULT_PRIMARY).all()  # the primary names its family
    assert fam.at["top1_agree@code.256", "sign"] == -1 and fam.at["kld_seqmean@code.256", "sign"] == 1
    assert fam.at["kld_p99@code.256", "n_members"] == 1
    assert "constant" in fam.at["kld_max@code.256", "reason"]
    merged = families_summary(fam)
    assert [len(m["members"]) for m in merged] == [4, 3]
    assert merged[1]["reversed"] == ["top1_agree@code.256"]


def test_bh_over_families_shares_the_family_p_and_keeps_raw_p():
    t, v = _table()
    fam = variant_families(t, v, list(t.index), DEFAULT_PRIMARY)
    ps = {f: p for f, p in zip(fam["family"].unique(), [0.001, 0.02, 0.04, 0.3], strict=False)}
    corr = pd.DataFrame({"zone": "full", "target": "score.composite", "variant": v,
                         "p": [ps[fam.at[x, "family"]] for x in v]})  # fmt: skip
    out = bh_over_families(corr, fam)
    uniq = out.drop_duplicates("family")
    ref = multipletests(uniq["p"], method="fdr_bh")[1]
    np.testing.assert_allclose(uniq["p_bh"], ref)
    assert (out.groupby("family")["p_bh"].nunique() == 1).all()
    assert (out["p"] == corr["p"]).all()


def test_primary_variant_is_explicit_with_a_noted_fallback():
    assert resolve_primary(["kld_mean@code.128", DEFAULT_PRIMARY], None) == (DEFAULT_PRIMARY, None)
    got, note = resolve_primary(["kld_mean@code.128", "kld_mean@prose.256"], None)
    assert got == "kld_mean@code.128" and "not in the cohort" in note
    assert resolve_primary(["kld_mean", "x"], None)[0] == "kld_mean"
    assert resolve_primary(["a", "b"], "b") == ("b", None)


@pytest.fixture(scope="module")
def result():
    syn = make_synthetic_cohort(n_quants=14, tasks=("organism/arith", "organism/lookup"), n_prompts=150,
                                settings=(("code", 256), ("code", 128)), max_damage=0.5, seed=5)  # fmt: skip
    return analyze(to_cohort(syn), AnalysisConfig(n_boot=100, reliability_splits=20, crossfit_splits=3,
                                                  progress=False))  # fmt: skip


def test_summary_holds_every_new_number(result):
    s = result.summary
    json.dumps(s, allow_nan=False)
    assert s["cohort"]["primary_variant"] == DEFAULT_PRIMARY
    for key in ("equivalence", "noise_ceiling", "crossfit", "failure_controls", "router_baselines",
                "variant_families", "decision", "direction", "paper_zone"):  # fmt: skip
        assert s[key], key
    rows = pd.DataFrame(s["correlations"])
    assert {"p", "p_bh", "family", "noise_ceiling", "rho_cf", "noise_ceiling_cf"} <= set(rows.columns)
    assert set(rows["zone"]) == {"full", "silent", "paper"}
    assert rows["target"].str.startswith("balance.").any()
    paper = rows[(rows["zone"] == "paper") & (rows["target"] == "score.composite")]
    assert paper["noise_ceiling"].notna().all() and paper["rho_cf"].notna().all()
    assert (rows["p_bh"].dropna() >= rows.loc[rows["p_bh"].notna(), "p"] - 1e-12).all()  # BH never lowers a p
    trust = s["decision"]["variant_trust"]
    assert trust[0]["family"] == s["variant_families"]["per_variant"][DEFAULT_PRIMARY]["family"]
    assert trust[0]["full"]["verdict"] in ("ranks", "fails", "cannot tell", "too few quants", "reversed")
    eq = s["equivalence"]
    assert sum(eq["counts"].values()) == s["cohort"]["n_quants"]
    assert eq["per_quant"]["q0000"]["n_equivalence.composite"] is not None
    front = [r for r in s["decision"]["quants"] if r["pareto.quant.bits_per_weight"]]
    assert front  # synthetic quants carry bits per weight and bytes


def test_report_opens_with_the_answer(result, tmp_path):
    from quantfid.analysis.report import write_report

    paths = write_report(result, tmp_path)
    html = paths["report"].read_text()
    order = [html.index(x) for x in ("The answer", "Which quants can replace the reference?",
                                     "Can a fidelity number be trusted", "<h1>Details</h1>", "Headline numbers",
                                     "Equivalence: evidence per quant", "Cross-fitting",
                                     "Failure prediction: controls", "Router: baselines")]  # fmt: skip
    assert order == sorted(order)
    assert paths["pareto"].stat().st_size > 5000
    assert "noise ceiling" in html.lower() and "<details>" in html


def test_explicit_unknown_primary_is_an_error(result):
    with pytest.raises(AnalysisInputError, match=r"primary variant 'kld_mean@code\.512'"):
        analyze(to_cohort(make_synthetic_cohort(n_quants=4, n_prompts=20, seed=1)),
                AnalysisConfig(primary_variant="kld_mean@code.512", n_boot=0, progress=False))  # fmt: skip


def test_trust_verdicts_by_hand():
    from types import SimpleNamespace

    from quantfid.analysis.extended import _trust_verdict

    cfg = SimpleNamespace(silent=SimpleNamespace(alpha=0.05), trust_rho=0.5, trust_ceiling=0.5)
    assert _trust_verdict(-0.8, 0.9, 0.001, 30, -1.0, cfg)[0] == "ranks"
    assert _trust_verdict(-0.2, 0.9, 0.01, 300, -1.0, cfg)[0] == "weak"
    assert _trust_verdict(0.7, 0.9, 0.001, 30, -1.0, cfg)[0] == "reversed"
    assert _trust_verdict(-0.1, 0.9, 0.6, 30, -1.0, cfg)[0] == "fails"  # KLD fails here
    assert _trust_verdict(-0.1, 0.3, 0.6, 30, -1.0, cfg)[0] == "cannot tell"  # the benchmark is too small
    assert _trust_verdict(-0.9, 0.4, 0.001, 10, -1.0, cfg)[0] == "ranks"  # a significant rho stands above the ceiling
    assert _trust_verdict(None, None, None, 0, -1.0, cfg)[0] == "too few quants"


@pytest.mark.parametrize("n_quants,n_prompts,seed,identical", [(3, 8, 1, 2), (8, 40, 2, 2), (5, 8, 0, 0)])
def test_tiny_cohorts_give_a_valid_summary_and_report(tmp_path, n_quants, n_prompts, seed, identical):
    """Degenerate corners: constant variants, zones of 0-2 quants, no router decision, bootstrap CIs that exclude
    their estimate: every number is JSON (None where undefined) and the report is written."""
    from quantfid.analysis.report import write_report

    c = to_cohort(make_synthetic_cohort(n_quants=n_quants, n_prompts=n_prompts, seed=seed, n_identical=identical))
    res = analyze(c, AnalysisConfig(n_boot=30, reliability_splits=5, crossfit_splits=2, progress=False))
    json.dumps(res.summary, allow_nan=False)
    assert write_report(res, tmp_path)["report"].stat().st_size > 10000
