"""Reference caches shared through a real MLflow tracking store (sqlite + local artifact root)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from quantfid.fidelity import CacheMismatchError, build_cache, fetch, get_or_build, publish
from quantfid.fidelity.share import EXPERIMENT


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    c.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return c


@pytest.mark.slow
def test_publish_fetch_roundtrip_and_refusal(reference, settings, client, tmp_path):
    cache = build_cache(reference.model, reference.tokenizer, settings, reference.fingerprint, tmp_path / "a")
    run_id = publish(cache, client)
    assert publish(cache, client) == run_id  # once per key
    run = client.get_run(run_id)
    assert run.data.tags["quantfid.role"] == "refcache" and run.data.tags["quantfid.refcache_key"] == cache.key
    assert run.info.status == "FINISHED"

    got = fetch(cache.key, client, cache_dir=tmp_path / "b")
    assert got is not None and got.key == cache.key and got.path.parent == tmp_path / "b" / "refcache"
    for name in cache.manifest["arrays"]:
        np.testing.assert_array_equal(np.asarray(got.array(name)), np.asarray(cache.array(name)))
    assert fetch("0" * 24, client, cache_dir=tmp_path / "c") is None

    # a teammate's sweep: nothing local, the store has it -> downloaded, not rebuilt (model=None would crash a build)
    teammate = get_or_build(None, reference.tokenizer, settings, reference.fingerprint, tmp_path / "d", client=client)
    assert teammate.key == cache.key and teammate.manifest["created"] == cache.manifest["created"]

    # a corrupted artifact in the store is refused, never used
    stored = tmp_path / "artifacts" / run_id / "artifacts" / "refcache" / "tail_logmass.npy"
    arr = np.load(stored)
    arr[:3] = 0
    np.save(stored, arr)
    with pytest.raises(CacheMismatchError, match="content hash of tail_logmass"):
        fetch(cache.key, client, cache_dir=tmp_path / "e")
    assert not (tmp_path / "e" / "refcache" / cache.key).exists()
