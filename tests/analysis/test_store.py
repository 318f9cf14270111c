"""End to end on a REAL MLflow store (sqlite + artifact dir): query, analysis, CLI, analysis run logging."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient

from quantfid.analysis import AnalysisConfig, AnalysisInputError, SilentZoneConfig, analyze
from quantfid.analysis.cli import main
from quantfid.analysis.query import load_cohort
from quantfid.analysis.synthetic import make_synthetic_cohort, write_to_mlflow

pytestmark = pytest.mark.slow  # a real sqlite MLflow store: seconds per test


@pytest.fixture(scope="module")
def cohort(store):
    return load_cohort(store.uri, store.experiment, [store.sweep_id], progress=False)


def test_load_cohort_reads_schema(store, cohort):
    syn = store.synthetic
    assert sorted(cohort.table.index) == sorted(syn.names)
    assert cohort.tasks == ["organism.arith", "organism.lookup", "organism.sort"]
    assert "kld_mean@code.256" in cohort.variants and "top1_agree@prose.64" in cohort.variants
    assert len(cohort.variants) == 2 * 14
    assert cohort.table.at["q0005", "kld_mean@prose.64"] == pytest.approx(
        syn.fidelity["q0005"][("prose", 64)]["fid.kld_mean"]
    )
    assert len(cohort.outcomes) == len(syn.names) * 300
    assert cohort.source["reference_fingerprint"] == "ref-synthetic"


def test_flips_from_store_equal_the_written_outcomes(store, cohort):
    res = analyze(cohort, AnalysisConfig(n_boot=200, progress=False))
    syn = store.synthetic
    ref = syn.outcomes["reference"]
    for q in ("q0003", "q0015"):
        o = syn.outcomes[q]
        lost = int((ref["passed"].to_numpy() & ~o["passed"].to_numpy()).sum())
        gained = int((~ref["passed"].to_numpy() & o["passed"].to_numpy()).sum())
        assert res.flips.at[q, "lost.composite"] == lost
        assert res.flips.at[q, "gained.composite"] == gained


def test_known_properties_of_the_synthetic_cohort(cohort):
    res = analyze(cohort, AnalysisConfig(n_boot=300, progress=False))
    s = res.summary
    sz = s["silent_zone"]
    eq = s["equivalence"]
    # q0000/q0001 reproduce the reference exactly: equivalent on the composite (300 prompts), indeterminate on every
    # task (100 prompts: a CI with no flip is +-0.037, wider than the +-0.02 margin); the most damaged quant differs
    assert {"q0000", "q0001"} <= set(eq["groups_composite"]["equivalent"])
    assert {"q0000", "q0001"} <= set(eq["groups"]["indeterminate"]) and eq["units_below_floor"]
    assert "q0015" in eq["groups"]["different"]
    assert sz["n_silent"] + sz["n_outside"] == sz["n_full"] == 16
    paper = s["paper_zone"]  # the paper-style McNemar zone keeps the identical quants, not the most damaged one
    assert {"q0000", "q0001"} <= set(paper["silent_quants"]) and "q0015" not in paper["silent_quants"]

    def rho(target, zone="full", variant="kld_mean@code.256"):
        return next(r for r in s["correlations"]
                    if r["variant"] == variant and r["target"] == target and r["zone"] == zone)  # fmt: skip

    r = rho("score.composite")
    assert r["rho"] < -0.5 and r["ci_low"] <= r["rho"] <= r["ci_high"] and r["n"] == 16
    assert rho("volume.composite")["rho"] > 0.8
    assert rho("score.composite", "silent")["n"] == sz["n_silent"]
    assert rho("score.composite", "paper")["n"] == paper["n_silent"]
    assert s["volume_direction"]["direction_identity_max_abs_error"] < 1e-9
    fc = s["failure_prediction"]["cohort"]
    assert fc["gm_ratio"]["value"] > 1.0  # failed prompts carry fail_kld_ratio = 1.15 more KLD by construction
    assert s["router"]["n_pairs"] == 16 * 15 // 2
    head = {h["name"]: h for h in s["headline"]}
    assert head["rho.full.score.composite"]["value"] == pytest.approx(r["rho"])
    assert head["router.accuracy"]["value"] == pytest.approx(s["router"]["accuracy"]["value"])
    json.dumps(s, allow_nan=False)


def test_cli_writes_report_and_logs_analysis_run(store, tmp_path):
    out = tmp_path / "rep"
    rc = main(["--tracking-uri", store.uri, "--experiment", store.experiment, "--sweep-id", store.sweep_id,
               "--out", str(out), "--n-boot", "200", "--no-progress"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "silent zone" in html.lower() and "Headline numbers" in html
    assert "The answer" in html and html.index("The answer") < html.index("Headline numbers")
    assert html.count("<img") == 5
    for name in ("fidelity_vs_score", "rho_per_variant", "volume_direction", "kld_passed_failed", "pareto"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000
    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(store.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`quantfid.role` = 'analysis'")
    assert runs, "no analysis run logged"
    run = runs[0]
    assert run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "plots"} <= arts
    assert run.data.metrics["n_silent"] == summary["silent_zone"]["n_silent"]
    # the analysis run is not read back as part of the cohort
    again = load_cohort(store.uri, store.experiment, [store.sweep_id], with_outcomes=False, progress=False)
    assert len(again.table) == 17


def test_refuses_to_mix_reference_fingerprints(store):
    other = make_synthetic_cohort(n_quants=3, n_prompts=10, n_identical=0, seed=9)
    write_to_mlflow(other, store.uri, "mixed", artifact_location=str(store.root / "mixed"), sweep_id="s1",
                    progress=False)  # fmt: skip
    write_to_mlflow(other, store.uri, "mixed", sweep_id="s2", reference_fingerprint="ref-OTHER", progress=False)
    with pytest.raises(AnalysisInputError, match="refusing to mix runs with different reference fingerprints"):
        load_cohort(store.uri, "mixed", progress=False)
    c = load_cohort(store.uri, "mixed", ["s2"], progress=False)  # one sweep selected: fine
    assert c.source["reference_fingerprint"] == "ref-OTHER"
    write_to_mlflow(other, store.uri, "mixed", sweep_id="s3", reference_fingerprint="ref-OTHER",
                    tokenizer_fingerprint="tok-OTHER", progress=False)  # fmt: skip
    with pytest.raises(AnalysisInputError, match="tokenizer fingerprints"):
        load_cohort(store.uri, "mixed", ["s2", "s3"], progress=False)
    # the CLI turns it into one clear error line and exit code 2
    assert main(["--tracking-uri", store.uri, "--experiment", "mixed", "--no-log", "--no-progress"]) == 2


def test_unfinished_runs_are_ignored(store):
    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(store.experiment)
    run = client.create_run(exp.experiment_id, tags={"quantfid.role": "quant", "quantfid.sweep_id": store.sweep_id,
                                                      "quantfid.schema_version": "1"})  # fmt: skip
    c = load_cohort(store.uri, store.experiment, [store.sweep_id], with_outcomes=False, progress=False)
    assert len(c.table) == 17
    client.set_terminated(run.info.run_id, "FAILED")


def test_query_input_errors(store, capsys):
    with pytest.raises(AnalysisInputError, match="experiment 'nope' not found"):
        load_cohort(store.uri, "nope", progress=False)
    with pytest.raises(AnalysisInputError, match="no FINISHED quant/reference runs"):
        load_cohort(store.uri, store.experiment, ["no-such-sweep"], progress=False)
    with pytest.raises(AnalysisInputError, match="refused by MLflow"):
        load_cohort(store.uri, store.experiment, filter_string="params.x === 'y'", progress=False)
    assert main(["--no-log"]) == 2
    assert "no source" in capsys.readouterr().err


def test_help_runs():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_silent_zone_counts_change_with_correction(cohort):
    none = analyze(cohort, AnalysisConfig(n_boot=0, progress=False, silent=SilentZoneConfig(correction="none")))
    holm = analyze(cohort, AnalysisConfig(n_boot=0, progress=False))
    assert none.summary["silent_zone"]["n_silent"] <= holm.summary["silent_zone"]["n_silent"]
    assert none.correlations["ci_low"].isna().all()  # n_boot=0 -> no bootstrap CI


def test_download_path_matches_in_place_read(store, cohort, monkeypatch):
    """Remote stores go through mlflow.artifacts.download_artifacts in a thread pool: same table as in place."""
    from quantfid.analysis import query

    monkeypatch.setattr(query, "_local_path", lambda uri: None)
    remote = load_cohort(store.uri, store.experiment, [store.sweep_id], max_workers=4, progress=False)
    cols = ["quant", "task", "prompt_id", "passed", "kld_completion"]
    a = remote.outcomes[cols].sort_values(cols[:3]).reset_index(drop=True)
    b = cohort.outcomes[cols].sort_values(cols[:3]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
