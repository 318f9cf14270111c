"""Team mode against the real thing: PostgreSQL + `mlflow server --serve-artifacts --app-name basic-auth`."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

WRITER = r"""
import os, sys, tempfile, mlflow
from mlflow.entities import Metric
wid, n = int(sys.argv[1]), int(sys.argv[2])
mlflow.set_experiment("team-writers")
shared = os.path.join(tempfile.mkdtemp(), "reference_outcomes.parquet")
open(shared, "wb").write(b"the same reference table for everyone" * 100)
for i in range(n):
    with mlflow.start_run(run_name=f"w{wid}-{i}", tags={"writer": str(wid)}):
        mlflow.log_params({"writer": wid, "i": i})
        run_id = mlflow.active_run().info.run_id
        metrics = [Metric("fid.kld_mean", wid + i / 100 + step, 0, step) for step in range(5)]
        mlflow.MlflowClient().log_batch(run_id, metrics=metrics)
        mlflow.log_artifact(shared, "outcomes")
        mlflow.log_text(f"writer {wid} run {i}", "note.txt")
print("done", wid)
"""


def _env(state, auth: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = state.uri
    if auth:
        env.update(MLFLOW_TRACKING_USERNAME=state.admin_user, MLFLOW_TRACKING_PASSWORD=state.admin_password)
    return env


def test_unauthenticated_client_is_refused(server):
    req = urllib.request.Request(server.uri + "/api/2.0/mlflow/experiments/search?max_results=1")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    probe = "import mlflow; mlflow.MlflowClient().search_experiments(max_results=1)"
    env = _env(server, auth=False) | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "401" in res.stderr
    wrong = _env(server) | {"MLFLOW_TRACKING_PASSWORD": "wrong", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    res = subprocess.run([sys.executable, "-c", probe], env=wrong, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "401" in res.stderr


def test_four_concurrent_writers_lose_nothing(server):
    """Four jobs writing at once, as a sweep's jobs do: the experiment exists before they start.

    (As the sweep's callback does. Four clients racing `mlflow.set_experiment` on a missing name is an MLflow
    client race: seen here, the losers' runs land in the Default experiment - nothing lost, but misfiled.)
    """
    import mlflow

    n = 4
    cas = Path(server.dir) / "artifacts" / ".cas"

    def blob_set() -> set[Path]:  # the server is shared by the session's team tests: count what this test adds
        return {p for p in cas.rglob("*") if p.is_file()}

    before = blob_set()
    os.environ.update(_env(server))
    try:
        mlflow.MlflowClient(server.uri).create_experiment("team-writers")
    finally:
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(w), str(n)],
            env=_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]

    os.environ.update(_env(server))
    try:
        client = mlflow.MlflowClient(server.uri)
        exp = client.get_experiment_by_name("team-writers")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        assert len(runs) == 4 * n
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert sorted((r.data.params["writer"], r.data.params["i"]) for r in runs) == sorted(
            (str(w), str(i)) for w in range(4) for i in range(n)
        )
        for r in runs:
            hist = client.get_metric_history(r.info.run_id, "fid.kld_mean")
            assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(5))
            assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"outcomes", "note.txt"}
        # through the proxy into the content-addressed store: the shared table is on disk once
        assert len(blob_set() - before) == 1 + 4 * n
        got = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="note.txt")
        assert Path(got).read_text().startswith("writer ")
    finally:
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)


def test_the_sweep_store_check_accepts_the_server(server):
    from quantfid.tracking.store import check_store, resolve_store

    check_store(resolve_store(server.uri, "/tmp", "x"))  # /health answers without credentials
