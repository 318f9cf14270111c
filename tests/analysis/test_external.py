"""External cohorts: cohort CSV, llama.cpp --kl-divergence logs, lm-eval --log_samples files.

data/q4_k_m.kld.log follows llama-perplexity's printout (perplexity.cpp, KL-divergence mode); data/cohort.csv is an
illustrative input in the documented CSV format, not a measured result.
"""

from __future__ import annotations

import json
import re
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


# ---------------------------------------------------------------- llama.cpp percentile names = native names


def printf(fmt: str, *args) -> str:
    """C printf formats as perplexity.cpp writes them (Python's % operator understands them, 'l' included)."""
    return fmt % args


def _llama_cpp_log(kld: np.ndarray, dp: np.ndarray) -> str:
    """The tail of `llama-perplexity --kl-divergence` exactly as perplexity.cpp prints it (its printf formats; the
    percentile of a sorted vector interpolated at fraction * (n - 1), as np.percentile does)."""

    def pct(x, f):
        return float(np.percentile(x, 100 * f))

    lines = ["kl_divergence: 0.42 seconds per pass - ETA 0.05 minutes", "",
             "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS"
             "            Same top p",
             "   1       7.0123 ±    1.4211       0.02101 ±    0.01213       0.02911 ±    0.00302     5.012 ±  0.588 %"
             "    92.157 ±  1.687 %", "",
             "====== Perplexity statistics ======",
             printf("Mean PPL(Q)                   : %10.6lf ± %10.6lf", 6.407115, 0.039119),
             printf("Mean PPL(base)                : %10.6lf ± %10.6lf", 6.231633, 0.037716),
             printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2lf%%", 99.34),
             printf("Mean ln(PPL(Q)/PPL(base))     : %10.6lf ± %10.6lf", 0.027772, 0.000723),
             printf("Mean PPL(Q)/PPL(base)         : %10.6lf ± %10.6lf", 1.028161, 0.000743),
             printf("Mean PPL(Q)-PPL(base)         : %10.6lf ± %10.6lf", 0.175482, 0.004620), "",
             "====== KL divergence statistics ======",
             printf("Mean    KLD: %10.6lf ± %10.6lf", kld.mean(), kld.std() / np.sqrt(len(kld) - 1)),
             printf("Maximum KLD: %10.6f", kld.max())]  # fmt: skip
    for label, f in (("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95), ("90.0%", 0.90)):
        lines.append(printf(label.replace("%", "%%") + "   KLD: %10.6f", pct(kld, f)))
    lines.append(printf("Median  KLD: %10.6f", np.median(kld)))
    for label, f in (("10.0%", 0.10), (" 5.0%", 0.05), (" 1.0%", 0.01), (" 0.1%", 0.001)):
        lines.append(printf(label.replace("%", "%%") + "   KLD: %10.6f", pct(kld, f)))
    lines += [printf("Minimum KLD: %10.6f", kld.min()), "", "====== Token probability statistics ======",
              printf("Mean    Δp: %6.3lf ± %5.3lf %%", 100 * dp.mean(), 100 * dp.std() / np.sqrt(len(dp) - 1)),
              printf("Maximum Δp: %6.3lf%%", 100 * dp.max())]  # fmt: skip
    for label, f in (("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95), ("90.0%", 0.90), ("75.0%", 0.75)):
        lines.append(printf(label.replace("%", "%%") + "   Δp: %6.3lf%%", 100 * pct(dp, f)))
    lines.append(printf("Median  Δp: %6.3lf%%", 100 * np.median(dp)))
    for label, f in (("25.0%", 0.25), ("10.0%", 0.10), (" 5.0%", 0.05), (" 1.0%", 0.01), (" 0.1%", 0.001)):
        lines.append(printf(label.replace("%", "%%") + "   Δp: %6.3lf%%", 100 * pct(dp, f)))
    lines += [printf("Minimum Δp: %6.3lf%%", 100 * dp.min()),
              printf("RMS Δp    : %6.3lf ± %5.3lf %%", 100 * np.sqrt((dp**2).mean()), 0.05),
              printf("Same top p: %6.3lf ± %5.3lf %%", 91.901, 0.072), "",
              "llama_perf_context_print:        load time =    1021.31 ms"]  # fmt: skip
    return "\n".join(lines) + "\n"


def test_imported_percentiles_carry_the_native_names_and_meanings():
    """A llama.cpp log in perplexity.cpp's print format, from known per-token values: every imported percentile
    equals the native statistic of the same name (fid.kld_p01 = 1st percentile, kld_p001 = 0.1th, ...)."""
    from quantfid.api.schema import DP_PERCENTILES

    native = DP_PERCENTILES  # the names the fidelity stage logs natively (their one home)
    rng = np.random.default_rng(0)
    kld = rng.lognormal(-4.5, 1.6, 20000) - 2e-6  # llama.cpp KLD can dip just below 0
    dp = rng.normal(-0.006, 0.05, 20000)
    m = parse_kld_log(_llama_cpp_log(kld, dp), "q4.log")
    for name, pct in native.items():
        if name not in ("p75", "p25"):  # llama.cpp prints those for delta-p only, as quantfid does
            assert m[f"kld_{name}"] == pytest.approx(np.percentile(kld, pct), abs=1e-6), name
        assert m[f"dp_{name}"] == pytest.approx(np.percentile(dp, pct), abs=1e-5), name
    assert m["kld_p01"] > m["kld_p001"]  # the 1st percentile is above the 0.1th
    assert m["kld_median"] == pytest.approx(np.median(kld), abs=1e-6)
    assert m["kld_mean"] == pytest.approx(kld.mean(), abs=1e-6)
    assert m["dp_p75"] == pytest.approx(np.percentile(dp, 75), abs=1e-5)
    assert m["ln_ppl_cor"] == pytest.approx(0.9934) and m["top1_agree"] == pytest.approx(0.91901)
    pnames = [k.split("_", 1)[1] for k in m if re.match(r"^(kld|dp)_p\d", k)]
    assert len(pnames) == 18 and set(pnames) <= set(native)


def test_csv_with_only_quant_score_n_and_metrics_works_end_to_end(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["--csv", str(DATA / "cohort.csv"), "--out", str(out), "--no-log", "--n-boot", "100", "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["silent_zone"]["method"] == "equivalence" and s["equivalence"]["paired"] is False
    assert "q2_k" in s["equivalence"]["groups"]["different"]
    html = (out / "report.html").read_text()
    assert "<b>unpaired</b> score CIs" in html and "no cross-fitting" in html
    assert "unpaired CIs" in capsys.readouterr().out
