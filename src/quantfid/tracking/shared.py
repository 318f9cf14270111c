"""Files shared through the tracking store by key: a teammate's sweep downloads what another already computed.

A shared file is the one artifact of a FINISHED run in the experiment :data:`~quantfid.api.schema.SHARED_EXPERIMENT`
tagged with its role (e.g. ``refoutcomes``), its key and the SHA-256 of its content. :func:`fetch_file` downloads the
newest such run's file and keeps it only when the content hash matches the tag (reference caches have their own,
richer verification in quantfid.fidelity.share).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from quantfid.api.schema import SCHEMA_VERSION, SHARED_EXPERIMENT, TAG_ROLE, TAG_SCHEMA, TAG_SHARE_KEY, TAG_SHARE_SHA256

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find_shared(client: Any, role: str, key: str):
    exp = client.get_experiment_by_name(SHARED_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{role}' and tags.`{TAG_SHARE_KEY}` = '{key}' and attributes.status = "
        "'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def publish_file(client: Any, role: str, key: str, path: Path, run_name: str | None = None) -> str:
    """Log ``path`` as the artifact of a ``role`` run keyed ``key`` (once per key); returns the run id."""
    existing = find_shared(client, role, key)
    if existing is not None:
        return existing.info.run_id
    exp = client.get_experiment_by_name(SHARED_EXPERIMENT)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        try:
            exp_id = client.create_experiment(SHARED_EXPERIMENT)
        except Exception:  # created by someone else in between
            exp_id = client.get_experiment_by_name(SHARED_EXPERIMENT).experiment_id
    tags = {TAG_ROLE: role, TAG_SHARE_KEY: key, TAG_SHARE_SHA256: sha256_file(path), TAG_SCHEMA: SCHEMA_VERSION}
    run = client.create_run(exp_id, tags=tags, run_name=run_name or f"{role}-{key[:12]}")
    try:
        client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    log.info("%s %s published to the tracking store (run %s)", role, key, run.info.run_id)
    return run.info.run_id


def fetch_file(client: Any, role: str, key: str, dest: Path) -> bool:
    """Download the shared file ``key`` to ``dest`` (atomically); False when the store has none or its content hash
    does not match its tag (then nothing is written)."""
    run = find_shared(client, role, key)
    if run is None:
        return False
    want = run.data.tags.get(TAG_SHARE_SHA256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        artifacts = client.list_artifacts(run.info.run_id)
        if len(artifacts) != 1 or artifacts[0].is_dir:
            log.warning("%s %s in run %s is not one file; ignored", role, key, run.info.run_id)
            return False
        local = Path(client.download_artifacts(run.info.run_id, artifacts[0].path, dst_path=tmp))
        got = sha256_file(local)
        if got != want:
            log.warning("%s %s from run %s refused: content hash %s != %s", role, key, run.info.run_id, got, want)
            return False
        os.replace(local, dest)
    log.info("%s %s fetched from the tracking store (run %s), not recomputed", role, key, run.info.run_id)
    return True
