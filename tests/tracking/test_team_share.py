"""Reference artifacts shared through a real team server: a second client (another run dir, same `mlflow server`)
downloads the reference caches and the reference outcome tables a first sweep published, instead of recomputing.

Proven by the sweeps' own log lines (not timing): the first client builds the reference cache ("building it
(reference forward passes ...)") and publishes it and the reference outcomes; the second fetches both, verified by key
and content hash, and builds nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_a_second_client_downloads_the_reference_artifacts_instead_of_recomputing(server, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tests" / "sweep"))
    try:
        from helpers import build_tiny_model, run_sweep
    finally:
        sys.path.remove(str(REPO / "tests" / "sweep"))
    model = build_tiny_model(tmp_path / "model")
    env = server.client_env()
    args = ["-m", "experiment=smoke", "quant=reference,rtn_w8_g128", f"model.name_or_path={model}", "tracking=team"]

    first = run_sweep([*args, "tracking.experiment=alice"], tmp_path / "alice", timeout=1500, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    log_a = first.stdout + first.stderr
    assert "building it (reference forward passes" in log_a
    assert "published to the tracking store" in log_a  # the reference outcome tables

    second = run_sweep([*args, "tracking.experiment=bob"], tmp_path / "bob", timeout=1500, **env)
    assert second.returncode == 0, second.stderr[-3000:]
    log_b = second.stdout + second.stderr
    assert "2 finished" in log_b  # bob's own runs, in his own experiment
    assert "reference cache" in log_b and "fetched from the tracking store, not rebuilt" in log_b
    assert "building it (reference forward passes" not in log_b
    assert log_b.count("refoutcomes") >= 2 and "fetched from the tracking store (run" in log_b
    fetched = sorted(p.name for p in (tmp_path / "bob" / "cache" / "bench").rglob("*.parquet"))
    assert fetched, "the reference outcome tables are in bob's cache"

    import mlflow

    for k, v in env.items():  # this process reads the store too, as the admin
        monkeypatch.setenv(k, v)
    client = mlflow.MlflowClient(server.uri)
    for name in ("alice", "bob"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
        assert len([r for r in runs if r.data.tags.get("quantfid.role") in ("quant", "reference")]) == 2
    # the same fidelity numbers from the fetched cache as from the built one
    metric = {
        name: sorted(
            (r.info.run_name, r.data.metrics.get("fid.kld_mean"))
            for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
            if r.data.tags.get("quantfid.role") in ("quant", "reference")
        )
        for name in ("alice", "bob")
    }
    assert metric["alice"] == metric["bob"]
