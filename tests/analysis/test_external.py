"""External cohorts: cohort CSV, llama.cpp --kl-divergence logs, lm-eval --log_samples files.

data/q4_k_m.kld.log follows llama-perplexity's printout (perplexity.cpp, KL-divergence mode); data/cohort.csv is an
illustrative input in the documented CSV format, not a measured result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantfid.analysis import AnalysisConfig, AnalysisInputError, SilentZoneConfig, analyze
from quantfid.analysis.cli import main
from quantfid.analysis.external import import_external, parse_kld_log, read_lm_eval_samples

DATA = Path(__file__).parent / "data"


def test_parse_llama_cpp_kld_log():
    m = parse_kld_log((DATA / "q4_k_m.kld.log").read_text(encoding="utf-8"))
    expected = {
        "kld_mean": 0.031273, "kld_mean_se": 0.000238, "kld_max": 5.911021, "kld_p999": 1.834118,
        "kld_p99": 0.412901, "kld_p95": 0.118233, "kld_p90": 0.066712, "kld_median": 0.011044, "kld_p10": 0.000312,
        "kld_p05": 0.000105, "kld_p01": 0.000011, "kld_p001": -0.000002, "kld_min": -0.000011,
        "ppl_quant": 6.407115, "ppl_base": 6.231633, "ln_ppl_ratio": 0.027772,
        "ln_ppl_ratio_se": 0.000723, "ppl_ratio": 1.028160, "ppl_diff": 0.175482, "ln_ppl_cor": 0.9934,
        "top1_agree": 0.91901, "top1_agree_se": 0.00072, "rms_dp": 0.05519, "dp_mean": -0.00596, "dp_p75": 0.00402,
        "dp_max": 0.95054, "dp_p25": -0.00611, "dp_p01": -0.19567, "dp_p001": -0.56054,
    }  # fmt: skip
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-9), k


def test_kld_log_without_kld_is_a_clear_error():
    with pytest.raises(AnalysisInputError, match="no 'Mean    KLD:' line"):
        parse_kld_log("Mean PPL(Q)                   :   6.407115 ±   0.039119\n", "x.log")


def _write_logs(tmp_path: Path, values: dict[str, float]) -> list[str]:
    text = (DATA / "q4_k_m.kld.log").read_text(encoding="utf-8")
    out = []
    for name, v in values.items():
        p = tmp_path / f"{name}.log"
        p.write_text(text.replace("0.031273 ±", f"{v:.6f} ±"), encoding="utf-8")
        out.append(f"{name}={p}")
    return out


def test_kld_logs_plus_scores_csv(tmp_path):
    kld = {"q8_0": 0.001, "q6_k": 0.004, "q5_k_m": 0.009, "q4_k_m": 0.031, "q2_k": 0.31}
    logs = _write_logs(tmp_path, kld)
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"quant": ["reference", *kld], "score": [0.62, 0.62, 0.61, 0.60, 0.59, 0.43],
                  "n": 500}).to_csv(scores, index=False)  # fmt: skip
    c = import_external(csv=scores, kld_logs=logs)
    assert c.table.at["q2_k", "kld_mean"] == pytest.approx(0.31)
    assert "top1_agree" in c.variants and c.table.at["q8_0", "ppl_quant"] == pytest.approx(6.407115)
    res = analyze(c, AnalysisConfig(n_boot=200, progress=False))
    sz = res.summary["silent_zone"]
    # no per-prompt outcomes: the default equivalence zone uses unpaired CIs, and says so
    assert sz["method"] == "equivalence" and sz["paired"] is False
    eq = res.summary["equivalence"]
    assert "unpaired" in eq["ci_method"]
    # 500 prompts each, unpaired: q2_k (-0.19) differs; q8_0 (0.00) cannot be shown within +-0.02 (n too small)
    assert eq["groups"]["different"] == ["q2_k"]
    assert "q8_0" in eq["groups"]["indeterminate"]
    old = analyze(c, AnalysisConfig(n_boot=0, progress=False, silent=SilentZoneConfig(method="ci_overlap")))
    assert "q2_k" not in old.summary["silent_zone"]["silent_quants"]
    assert "q8_0" in old.summary["silent_zone"]["silent_quants"]
    r = next(r for r in res.summary["correlations"]
             if r["variant"] == "kld_mean" and r["target"] == "score.composite" and r["zone"] == "full")  # fmt: skip
    assert r["rho"] == pytest.approx(-1.0)  # scores fall strictly as kld_mean rises
    assert res.summary["router"] is None and any("per-prompt outcomes" in n for n in res.summary["notes"])


@pytest.mark.slow
def test_csv_cli_end_to_end_logs_analysis_run(tmp_path, store):
    uri = store.uri  # the session's sqlite store: creating another one costs seconds of migrations
    out = tmp_path / "rep"
    rc = main(["--csv", str(DATA / "cohort.csv"), "--silent-zone", "delta", "--band", "0.01", "--out", str(out),
               "--log-tracking-uri", uri, "--n-boot", "100", "--no-progress"])  # fmt: skip
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["silent_zone"]["method"] == "delta"
    assert s["silent_zone"]["silent_quants"] == ["q5_k_m", "q6_k", "q8_0"]  # |0.62 - score| <= 0.01
    assert s["source"]["kind"] == "external"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quantfid-analysis")
    run = client.search_runs([exp.experiment_id], "tags.`quantfid.role` = 'analysis'")[0]  # the newest first
    assert run.data.tags["quantfid.analysis.source"] == "external"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "summary.json"}


def _write_lm_eval(root: Path, name: str, passed: dict[str, np.ndarray]) -> Path:
    d = root / name / f"__models__{name}"
    d.mkdir(parents=True)
    for task, arr in passed.items():
        with open(d / f"samples_{task}_2026-11-22T10-00-00.123456.jsonl", "w", encoding="utf-8") as f:
            for i, v in enumerate(arr):
                rec = {"doc_id": i, "doc": {"q": f"question {i}"}, "target": "A", "arguments": {},
                       "resps": [["A" if v else "B"]], "filtered_resps": ["A" if v else "B"], "filter": "none",
                       "metrics": ["acc", "acc_norm"], "doc_hash": f"h{i}", "prompt_hash": f"p{i}",
                       "target_hash": "t", "acc": float(v), "acc_norm": float(v)}  # fmt: skip
                f.write(json.dumps(rec) + "\n")
    return root / name


def test_lm_eval_samples_give_per_prompt_outcomes(tmp_path):
    rng = np.random.default_rng(0)
    ref = {"arc_easy": rng.random(60) < 0.6, "hellaswag": rng.random(60) < 0.5}
    dirs = {"reference": _write_lm_eval(tmp_path, "reference", ref)}
    damage = {"qa": 0.0, "qb": 0.05, "qc": 0.2, "qd": 0.6}
    for q, d in damage.items():
        flipped = {t: np.where(rng.random(60) < d, False, v) for t, v in ref.items()}
        dirs[q] = _write_lm_eval(tmp_path, q, flipped)
    fid = tmp_path / "fid.csv"
    pd.DataFrame({"quant": list(damage), "kld_mean": [0.001, 0.01, 0.05, 0.3]}).to_csv(fid, index=False)
    c = import_external(csv=fid, lm_eval=[f"{k}={v}" for k, v in dirs.items()])
    assert c.tasks == ["arc_easy", "hellaswag"]
    assert c.table.at["reference", "score.arc_easy"] == pytest.approx(ref["arc_easy"].mean())
    res = analyze(c, AnalysisConfig(n_boot=100, progress=False))
    assert res.summary["silent_zone"]["method"] == "equivalence" and res.summary["silent_zone"]["paired"] is True
    assert "qd" in res.summary["equivalence"]["groups"]["different"]
    paper = res.summary["paper_zone"]  # the paper-style McNemar zone, beside it
    assert paper["method"] == "mcnemar"
    assert "qa" in paper["silent_quants"]
    assert "qd" not in paper["silent_quants"]
    assert res.flips.at["qa", "volume.composite"] == 0
    assert res.summary["failure_prediction"] is None  # lm-eval has no per-prompt KLD
    assert any("no per-prompt KLD" in n for n in res.summary["notes"])


def test_lm_eval_metric_choice_and_errors(tmp_path):
    d = _write_lm_eval(tmp_path, "m", {"arc_easy": np.array([True, False, True])})
    f = read_lm_eval_samples(d, "acc_norm")
    assert f["passed"].tolist() == [True, False, True]
    with pytest.raises(AnalysisInputError, match="metric 'bleu' not in the samples"):
        read_lm_eval_samples(d, "bleu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisInputError, match=r"no samples_<task>_<date>\.jsonl"):
        read_lm_eval_samples(tmp_path / "empty")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("name,score\nreference,0.5\n", "required column 'quant' missing"),
        ("quant,score,kld\nreference,0.5,\na,1.5,0.1\nb,0.4,0.2\nc,0.3,0.3\n", "accuracy in \\[0, 1\\]"),
        ("quant,score,kld\nreference,0.5,\na,0.5,x\nb,0.4,0.2\nc,0.3,0.3\n", "column 'kld' is not numeric"),
        ("quant,score,kld\nbase,0.5,\na,0.5,0.1\nb,0.4,0.2\nc,0.3,0.3\n", "reference 'reference' not among"),
        ("quant,score\nreference,0.5\na,0.5\nb,0.4\nc,0.3\n", "no fidelity metric"),
        ("quant,kld\nreference,0\na,0.1\nb,0.2\nc,0.3\n", "no benchmark score"),
    ],
)
def test_csv_input_errors(tmp_path, content, match):
    p = tmp_path / "c.csv"
    p.write_text(content)
    with pytest.raises(AnalysisInputError, match=match):
        import_external(csv=p)


def test_cli_rejects_two_sources_and_missing_files(tmp_path, capsys):
    assert main(["--csv", str(DATA / "cohort.csv"), "--experiment", "x", "--no-log"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["--kld-log", str(tmp_path / "missing.log"), "--no-log"]) == 2
    assert "does not exist" in capsys.readouterr().err
