"""The real `quantfid-sweep -m` multirun on a real sqlite MLflow store: schema, SIGKILL + resume, FAILED, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import FINISHED_BY_IDENTITY, REPO, SWEEP_BIN, run_rows, run_sweep, sweep_env

pytestmark = pytest.mark.slow

SMOKE = ["-m", "experiment=smoke"]


def _model(tiny_model: Path) -> str:
    return f"model.name_or_path={tiny_model}"


def _finished_jobs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        rows = run_rows(
            db,
            "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'quantfid.role' and t.value in ('quant', 'reference') and r.status = 'FINISHED'",
        )
    except Exception:  # tables not created yet
        return 0
    return rows[0][0]


def test_smoke_sweep_killed_resumed_and_skipped(tiny_model, tmp_path):
    run_dir = tmp_path / "runs"
    db = run_dir / "mlflow.db"
    # 1. start the sweep, SIGKILL it as soon as its first job is FINISHED
    proc = subprocess.Popen(
        [SWEEP_BIN, *SMOKE, _model(tiny_model)],
        cwd=REPO,
        env=sweep_env(run_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while _finished_jobs(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = _finished_jobs(db)
    assert 1 <= finished_before < 3, "the sweep must have been killed mid-way for this test to mean anything"

    # 2. rerun: completes only what is missing, no duplicate FINISHED identity
    res = run_sweep([*SMOKE, _model(tiny_model)], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{3 - finished_before} finished, {finished_before} skipped" in res.stdout + res.stderr
    per_identity = dict(run_rows(db, FINISHED_BY_IDENTITY))
    assert len(per_identity) == 3 and set(per_identity.values()) == {1}
    # the runs the SIGKILL left RUNNING (the first sweep's parent, maybe the killed job) were ended KILLED by the
    # rerun before it resumed: none is RUNNING, none is FINISHED twice
    statuses = [s for (s,) in run_rows(db, "select status from runs")]
    assert statuses.count("FINISHED") == 3 + 1  # three jobs + the second sweep's parent run
    assert statuses.count("RUNNING") == 0 and statuses.count("KILLED") >= 1
    ended = run_rows(db, "select value from tags where key = 'quantfid.ended_by'")
    assert ended and all("found it dead at start" in v for (v,) in ended)

    # 3. everything is in the store, in the schema's shape
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")  # MlflowClient.load_table searches through the fluent API's store
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("quantfid-smoke")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    sweep = [r for r in runs if r.data.tags["quantfid.role"] == "sweep"]
    jobs = [r for r in runs if r.data.tags["quantfid.role"] in ("quant", "reference")]
    assert len(sweep) == 1 and len(jobs) == 3
    assert sweep[0].data.tags["quantfid.jobs.skipped"] == str(finished_before)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    cohort_csv = mlflow.artifacts.download_artifacts(
        run_id=sweep[0].info.run_id, artifact_path="cohort/cohort.csv", tracking_uri=client.tracking_uri
    )
    cohort_table = pd.read_csv(cohort_csv)
    # the second sweep's cohort: the jobs it ran and those it skipped (FINISHED by the first), one row each
    assert sorted(cohort_table["run_name"]) == sorted(r.info.run_name for r in jobs)
    assert set(cohort_table["status"]) == {"FINISHED"}
    assert {"fid.kld_mean", "bench.composite.acc", "perf.decode_tokens_per_s"} <= set(cohort_table.columns)
    names = {r.data.tags["quantfid.quant_name"] for r in jobs}
    assert names == {"reference", "rtn_w8_g128", "rtn_w2_g64"}
    for r in jobs:
        t, p, m = r.data.tags, r.data.params, r.data.metrics
        assert t["quantfid.schema_version"] == "1" and t["mlflow.parentRunId"]
        for key in ("sweep_id", "run_identity", "reference_fingerprint", "tokenizer_fingerprint", "quant_fingerprint"):
            assert t[f"quantfid.{key}"], key
        assert t["quantfid.git_commit"] and t["quantfid.versions.mlflow"] == mlflow.__version__
        assert p["model.name_or_path"] == str(tiny_model) and p["fidelity.corpus"] == "code"
        assert p["fidelity.context"] == "128" and p["quant.backend"] in ("reference", "rtn")
        for k in ("fid.kld_mean", "fid.ppl_ratio", "fid.top1_agree", "bench.composite.acc", "quant.bits_per_weight"):
            assert k in m, k
        # speed and memory on the fixed workload (issue 16)
        assert m["perf.prefill_tokens_per_s"] > 0 and m["perf.decode_tokens_per_s"] > 0
        assert m["perf.peak_memory_bytes"] > 50e6 and t["quantfid.perf.memory"] in ("rss_hwm", "rss_lifetime_peak")
        assert t["quantfid.perf.workload"] == "1x64+16"
        # inputs: the fidelity corpus and each task, with digests
        inputs = {d.dataset.name: d for d in client.get_run(r.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"corpus:code", "task:organism/arith", "task:organism/choice"}
        assert all(d.dataset.digest for d in inputs.values())
        assert {t.value for d in inputs.values() for t in d.tags if t.key == "mlflow.data.context"} == {
            "fidelity_corpus", "bench_task"
        }
        # the per-prompt outcomes as an MLflow table: prompt, output, pass/fail, per-prompt KLD
        shown = client.load_table(exp.experiment_id, "outcomes/outcomes_table.json", run_ids=[r.info.run_id])
        assert len(shown) == 6 and {"prompt", "output", "passed", "kld_prompt"} <= set(shown.columns)
        assert m["bench.organism.arith.n"] == 3 and m["bench.organism.choice.n"] == 3
        table = pd.read_parquet(
            io.BytesIO(
                Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=r.info.run_id,
                        artifact_path="outcomes/outcomes.parquet",
                        tracking_uri=client.tracking_uri,
                    )
                ).read_bytes()
            )
        )
        assert list(table.columns[:8]) == [
            "task",
            "prompt_id",
            "prompt_hash",
            "output",
            "passed",
            "score",
            "kld_prompt",
            "kld_completion",
        ]
        assert len(table) == 6 and table["kld_prompt"].notna().all()
        assert {a.path for a in client.list_artifacts(r.info.run_id, "config")} == {"config/resolved.yaml"}
    ref = next(r for r in jobs if r.data.tags["quantfid.role"] == "reference")
    w2 = next(r for r in jobs if r.data.tags["quantfid.quant_name"] == "rtn_w2_g64")
    assert ref.data.metrics["fid.kld_mean"] == 0.0 and w2.data.metrics["fid.kld_mean"] > 0
    assert ref.data.params["quant.backend"] == "reference" and w2.data.params["quant.bits"] == "2"
    # outputs under Hydra's sweep dir
    assert len(list((run_dir / "multirun").rglob("outcomes.parquet"))) >= 3

    # 4. a third run has nothing left to do
    res = run_sweep([*SMOKE, _model(tiny_model)], run_dir)
    assert res.returncode == 0 and "0 finished, 3 skipped" in res.stdout + res.stderr
    assert set(dict(run_rows(db, FINISHED_BY_IDENTITY)).values()) == {1}


LONG_TASK = """schema: 1
name: longtask
version: 1
source:
  type: jsonl
  path: longtask.jsonl
scoring:
  type: exact
"""


def _long_task_dir(root: Path) -> Path:
    """A task whose prompt does not fit the tiny model's 256 positions: valid for the preflight (task files are
    checked without a model), a PromptTooLongError inside the job."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "longtask.yaml").write_text(LONG_TASK)
    prompt = " ".join(f"x{i} = {i} + {i}" for i in range(400))
    (root / "longtask.jsonl").write_text(json.dumps({"id": "0", "prompt": prompt, "answer": "1"}) + "\n")
    return root


def test_a_failed_job_lets_the_sweep_go_on_and_exits_1(tiny_model, tmp_path):
    run_dir = tmp_path / "runs"
    env = {"QUANTFID_TASK_PATH": str(_long_task_dir(tmp_path / "tasks"))}
    tasks = "bench.tasks=[longtask],[organism/arith]"
    # direction off: a one-prompt task has no calibration prompts (the preflight would refuse it, tested elsewhere)
    args = ["-m", "experiment=smoke", "quant=rtn_w8_g128", tasks, _model(tiny_model), "direction.enabled=false"]
    res = run_sweep(args, run_dir, **env)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "1 finished, 0 skipped (already FINISHED or claimed), 1 failed" in res.stderr
    failed_line = next(ln for ln in res.stderr.splitlines() if ln.startswith("  FAILED "))
    assert "rtn_w8_g128@code.128" in failed_line and "PromptTooLongError" in failed_line
    assert "exit status 1: a job failed (sweep.allow_failures=true exits 0)" in res.stderr
    db = run_dir / "mlflow.db"
    rows = run_rows(
        db, "select r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'quantfid.error'"
    )
    errors = sorted(rows)
    assert errors[0][0] == "FAILED" and "PromptTooLongError" in errors[0][1]
    roles = dict(
        run_rows(db, "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                     "where t.key = 'quantfid.role' and t.value = 'sweep'")
    )  # fmt: skip
    assert roles == {"sweep": "FAILED"}  # the parent says what the exit status says
    statuses = sorted(s for (s,) in run_rows(db, "select status from runs"))
    assert statuses == ["FAILED", "FAILED", "FINISHED"]  # failed job, the parent, the good job

    # allowed failures: the finished job is skipped, the failing one fails again, and the exit status is 0
    res = run_sweep([*args, "sweep.allow_failures=true"], run_dir, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "0 finished, 1 skipped (already FINISHED or claimed), 1 failed" in res.stderr
    assert "failures allowed (sweep.allow_failures=true): exit status 0" in res.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_sweep_killed_never_running(sig, code, tiny_model, tmp_path):
    run_dir = tmp_path / "runs"
    db = run_dir / "mlflow.db"
    proc = subprocess.Popen(
        [SWEEP_BIN, *SMOKE, _model(tiny_model)], cwd=REPO, env=sweep_env(run_dir),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run in the background inherits SIGINT ignored (a shell's rule for background jobs), and Python keeps
        # an ignored SIGINT ignored: give the sweep the default disposition, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while _finished_jobs(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "ended KILLED" in err
    statuses = [s for (s,) in run_rows(db, "select status from runs")]
    assert "RUNNING" not in statuses and statuses.count("KILLED") >= 1, statuses
    sweep_status = run_rows(
        db, "select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'quantfid.role' and t.value = 'sweep'"
    )  # fmt: skip
    assert sweep_status == [("KILLED",)]


def test_two_sweeps_at_once_never_run_one_identity_twice(tiny_model, tmp_path):
    """Two `quantfid-sweep` processes started together on one store: each identity is claimed before it runs, so
    every job runs in exactly one of them and the other skips it."""
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    args = [*SMOKE, _model(tiny_model), f"tracking.uri=sqlite:///{db}"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [
        subprocess.Popen([SWEEP_BIN, *args], cwd=REPO, env=sweep_env(tmp_path / f"runs{i}"), **pipes) for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    summaries = [next(ln for ln in o.splitlines() if ln.startswith("sweep ")) for o, _ in outs]
    finished = [int(s.split(": ")[1].split(" finished")[0]) for s in summaries]
    skipped = [int(s.split(" finished, ")[1].split(" skipped")[0]) for s in summaries]
    assert sum(finished) == 3 and sum(skipped) == 3, summaries
    per_identity = dict(run_rows(db, FINISHED_BY_IDENTITY))
    assert len(per_identity) == 3 and set(per_identity.values()) == {1}
    active = [s for (s,) in run_rows(db, "select status from runs where lifecycle_stage = 'active'")]
    assert sorted(active) == ["FINISHED"] * 5  # three jobs + two sweep parents; lost claims were deleted


def test_joblib_launcher_runs_jobs_in_parallel_workers(tiny_model, tmp_path):
    run_dir = tmp_path / "runs"
    res = run_sweep([*SMOKE, "hydra/launcher=parallel", "quant=reference,rtn_w8_g128", _model(tiny_model)], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 finished" in res.stdout + res.stderr
    rows = run_rows(
        run_dir / "mlflow.db",
        "select count(distinct t.value) from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'mlflow.parentRunId' and r.status = 'FINISHED'",
    )
    assert rows[0][0] == 1  # both workers' runs are children of the one sweep run


def test_submitit_local_launcher(tiny_model, tmp_path):
    run_dir = tmp_path / "runs"
    res = run_sweep([*SMOKE, "hydra/launcher=slurm_local", "quant=rtn_w2_g64", _model(tiny_model)], run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 finished" in res.stdout + res.stderr
    assert list((run_dir / "multirun").rglob("*_submitted.pkl")), "submitit did not run the job"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "experiment=no_such_preset"], "Could not find 'experiment/no_such_preset'"),
        (["-m", "experiment=smoke", "quant=[reference,"], "error: the override 'quant=[reference,' does not parse"),
        (["-m", "experiment=smoke", "tracking.uri=http://127.0.0.1:9"], "'http://127.0.0.1:9' is unreachable"),
    ],
)
def test_bad_input_gives_one_clear_error_before_any_model_work(args, needle, tmp_path):
    res = run_sweep(args, tmp_path / "runs", timeout=300)
    assert res.returncode != 0
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and "Loading weights" not in res.stderr
    assert not list((tmp_path / "runs").rglob("outcomes.parquet"))


def test_no_write_permission_on_the_store(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits; the immutable attribute binds root too
        made = subprocess.run(["chattr", "+i", str(locked)], capture_output=True)
        if made.returncode:
            pytest.skip(f"running as root and chattr +i is not available here: {made.stderr.decode().strip()}")
    else:
        locked.chmod(0o555)
    try:
        res = run_sweep(
            ["experiment=smoke", f"tracking.uri=sqlite:///{locked}/store/mlflow.db"], tmp_path / "runs", timeout=300
        )
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no write permission" in res.stderr and str(locked) in res.stderr
    assert "Traceback" not in res.stderr
