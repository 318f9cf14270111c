"""The direction-aware metrics end to end, on the organism: a real multirun with the behavioural metric on, a small
ground-truth experiment in the same store, and `quantfid-analyze` reading only that store. The fid.dir_* / fid.beh_*
metrics land on every quant run (zero for the reference, by definition), and the pre-registered comparison comes out
of the store with its ground-truth section."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_sweep, sweep_env

from quantfid.analysis.direction_vs_kld import BEATS, NO_EVIDENCE, WORSE
from quantfid.api.variants import PREREGISTERED_DIRECTION_VARIANTS

pytestmark = pytest.mark.slow

QUANTS = "quant=reference,rtn_w8_g128,rtn_w6_g128,rtn_w4_g32,rtn_w3_g64,rtn_w2_g64"
ANALYZE_BIN = str(Path(sys.executable).with_name("quantfid-analyze"))


def test_direction_metrics_from_the_sweep_through_the_store_to_the_comparison(tmp_path):
    run_dir = tmp_path / "runs"
    db = run_dir / "mlflow.db"
    main = ["-m", "experiment=smoke", QUANTS, "bench.limit=12", "direction.behavioural=true", "direction.n_per_task=6"]
    res = run_sweep(main, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    truth = ["-m", "experiment=organism_truth", QUANTS, "bench.limit=20",
             "bench.tasks=[organism_truth/arith,organism_truth/choice]"]  # fmt: skip
    res = run_sweep(truth, run_dir)
    assert res.returncode == 0, res.stderr[-3000:]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("quantfid-smoke")
    found = client.search_runs([exp.experiment_id], "tags.`quantfid.role` != 'sweep'")
    runs = {r.data.params["quant.name"]: r for r in found}
    assert set(runs) == {"reference", "rtn_w8_g128", "rtn_w6_g128", "rtn_w4_g32", "rtn_w3_g64", "rtn_w2_g64"}
    names = [f"fid.{v.split('@')[0]}" for v in PREREGISTERED_DIRECTION_VARIANTS]
    assert "fid.beh_net_rate" in names
    for quant, run in runs.items():
        m = run.data.metrics
        assert all(n in m and math.isfinite(m[n]) for n in names), (quant, sorted(k for k in m if "dir_" in k))
    assert all(runs["reference"].data.metrics[n] == 0.0 for n in names)
    # the broken 2-bit quant moves the gold answer's log-likelihood more than the 8-bit one
    assert abs(runs["rtn_w2_g64"].data.metrics["fid.dir_gold_ll_delta"]) > abs(
        runs["rtn_w8_g128"].data.metrics["fid.dir_gold_ll_delta"]
    )

    out = tmp_path / "report"
    res = subprocess.run(
        [ANALYZE_BIN, "--tracking-uri", f"sqlite:///{db}", "--experiment", "quantfid-smoke",
         "--truth-experiment", "organism-truth", "--out", str(out)],
        cwd=REPO, env=sweep_env(run_dir), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    sec = json.loads((out / "summary.json").read_text())["direction_vs_kld"]
    assert sec["not_measured"] == []  # the behavioural metric was measured, so every pre-registered metric is in
    assert {r["metric"] for r in sec["cohort"]} >= set(PREREGISTERED_DIRECTION_VARIANTS)
    assert set(sec["verdicts"].values()) <= {BEATS, NO_EVIDENCE, WORSE}
    # every zone quant has a truth score (the truth experiment ran the same quants), and with >= 4 of them the
    # comparison against the truth scores has a row per metric and control
    assert sec["truth"]["n_quants"] == sec["zone"]["n_quants"] >= 4, sec["zone"]
    rows = sec["truth"]["rows"]
    assert {r["metric"] for r in rows} == {r["metric"] for r in sec["cohort"]}
    assert all(r["abs_rho_kld"] is not None and 0 <= r["abs_rho_kld"] <= 1 for r in rows)
    assert "Direction-aware metrics against KLD (pre-registered)" in (out / "report.html").read_text()
