"""The local store, its checks, and both MLflow plugins, against a real sqlite MLflow store (no mocks)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import pytest
from quantfid_mlflow.cas import BLOB_DIR, ContentAddressedArtifactRepository

from quantfid.tracking.store import StoreError, check_store, resolve_store, setup_experiment


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = resolve_store(None, tmp_path / "runs", "plugins-test")
    check_store(s)
    exp = setup_experiment(s)
    yield s, exp
    mlflow.set_tracking_uri(None)


def test_entry_points_are_registered():
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    from mlflow.tracking.context.registry import _run_context_provider_registry

    assert "cas" in _artifact_repository_registry._registry
    assert any(type(p).__name__ == "QuantfidRunContextProvider" for p in _run_context_provider_registry)


def test_run_context_provider_tags_every_fluent_run(store):
    s, exp = store
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    tags = mlflow.MlflowClient(s.uri).get_run(run.info.run_id).data.tags
    assert len(tags["quantfid.git_commit"]) >= 40 or tags["quantfid.git_commit"] == "unknown"
    assert tags["quantfid.versions.mlflow"] == mlflow.__version__
    assert "quantfid.versions.torch" in tags and "quantfid.versions.quantfid" in tags


def test_cas_stores_identical_artifacts_once_and_reads_back(store, tmp_path):
    s, exp = store
    table = tmp_path / "outcomes.parquet"
    table.write_bytes(os.urandom(4096))
    other = tmp_path / "other.txt"
    other.write_text("different")
    ids = []
    for _ in range(3):
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(table), "outcomes")
            mlflow.log_text("per-run text " + run.info.run_id, "note.txt")
        ids.append(run.info.run_id)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_artifact(str(other), "outcomes")
    client = mlflow.MlflowClient(s.uri)
    uri = client.get_run(ids[0]).info.artifact_uri
    assert uri.startswith("cas:")
    root = Path(s.artifact_location.removeprefix("cas://"))
    blobs = [p for p in (root / BLOB_DIR).rglob("*") if p.is_file()]
    assert len(blobs) == 1 + 3 + 1  # one shared table, three distinct notes, one other file
    paths = [Path(client.get_run(i).info.artifact_uri.removeprefix("cas:")) / "outcomes" / table.name for i in ids]
    assert len({p.stat().st_ino for p in paths}) == 1 and paths[0].stat().st_nlink == 4  # 3 runs + the blob
    dst = tmp_path / "dl"
    dst.mkdir()
    got = mlflow.artifacts.download_artifacts(run_id=ids[2], artifact_path="outcomes/outcomes.parquet", dst_path=dst)
    assert Path(got).read_bytes() == table.read_bytes()
    assert [f.path for f in client.list_artifacts(ids[1], "outcomes")] == ["outcomes/outcomes.parquet"]
    # the blob is read-only: no run can change what another run logged
    assert not os.stat(paths[0]).st_mode & 0o222


def test_cas_uri_must_be_absolute_local():
    from quantfid_mlflow.casuri import CasUriError

    with pytest.raises(CasUriError, match="absolute"):
        ContentAddressedArtifactRepository("cas://somehost/path")


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        check_store(resolve_store(uri, "/tmp", "x"))
    assert uri in str(err.value) and "unreachable" in str(err.value)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    ("uri", "needle"),
    [("file:///tmp/mlruns", "plain file store"), ("sqlite://relative.db", "sqlite:////"), ("ftp://x/y", "scheme")],
)
def test_unusable_store_uris_are_refused(uri, needle):
    with pytest.raises(StoreError, match=needle):
        check_store(resolve_store(uri, "/tmp", "x"))
