"""Reference caches: reuse a local one, else fetch it from the MLflow tracking store, else build (and publish) it,
so a teammate or a second sweep downloads instead of recomputing.

A published cache is the ``refcache/`` artifact directory of a run tagged ``quantfid.role=refcache`` and
``quantfid.refcache_key=<key>`` in the experiment ``quantfid-refcache``. ``fetch`` finds the newest FINISHED such run
in any experiment, downloads it, and verifies key and content hash before using it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from quantfid.api.paths import cache_dir as cache_dir_default
from quantfid.fidelity.cache import IDENTITY_FIELDS, ReferenceCache, build, check_context, identity_for
from quantfid.fidelity.settings import CacheMismatchError, FidelitySettings

log = logging.getLogger(__name__)

EXPERIMENT = "quantfid-refcache"
ARTIFACT_DIR = "refcache"


def _find_run(key: str, client: Any):
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    if not exp_ids:
        return None
    runs = client.search_runs(
        exp_ids,
        filter_string=(
            "tags.`quantfid.role` = 'refcache' and "
            f"tags.`quantfid.refcache_key` = '{key}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def publish(
    cache: ReferenceCache, client: Any, experiment_name: str = EXPERIMENT, artifact_location: str | None = None
) -> str:
    """Log ``cache`` as the artifact of a ``refcache`` run (once per key); returns the run id."""
    existing = _find_run(cache.key, client)
    if existing is not None:
        return existing.info.run_id
    exp = client.get_experiment_by_name(experiment_name)
    exp_id = (
        exp.experiment_id if exp else client.create_experiment(experiment_name, artifact_location=artifact_location)
    )
    m = cache.manifest
    tags = {
        "quantfid.role": "refcache",
        "quantfid.refcache_key": cache.key,
        "quantfid.reference_fingerprint": m["reference_fingerprint"],
        "quantfid.tokenizer_fingerprint": m["tokenizer_fingerprint"],
        "quantfid.schema_version": "1",
    }
    run = client.create_run(exp_id, tags=tags, run_name=f"refcache-{m['corpus']}.{m['context']}-{cache.key[:8]}")
    try:
        for k in ("corpus", "context", "scored_fraction", "topk", "tail_samples", "exact", "n_scored", "vocab_size"):
            client.log_param(run.info.run_id, f"refcache.{k}", m[k])
        client.log_artifacts(run.info.run_id, str(cache.path), artifact_path=ARTIFACT_DIR)
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def fetch(key: str, client: Any, cache_dir: str | Path | None = None) -> ReferenceCache | None:
    """Download the published cache ``key`` into the local cache dir; None if the store has none.

    Raises ``CacheMismatchError`` if the downloaded cache's key or content hash does not match (it is not kept).
    """
    run = _find_run(key, client)
    if run is None:
        return None
    root = Path(cache_dir or cache_dir_default()) / "refcache"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".fetch-{key}-") as tmp:
        local = Path(client.download_artifacts(run.info.run_id, ARTIFACT_DIR, dst_path=tmp))
        cache = ReferenceCache.load(local, verify=True)
        if cache.key != key:
            raise CacheMismatchError(f"run {run.info.run_id} holds cache {cache.key}, not {key}; it is refused")
        final = root / key
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(local), final)
    return ReferenceCache.load(final, verify=False)


def get_or_build(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: FidelitySettings,
    reference_fingerprint: str,
    cache_dir: str | Path | None = None,
    client: Any = None,
    publish_new: bool = False,
) -> ReferenceCache:
    """The cache for ``settings``: local if valid, else fetched from the tracking store, else built (and published).

    A local or fetched cache that fails verification is discarded and rebuilt, with a warning.
    """
    check_context(model, settings.context)
    identity, _, _ = identity_for(settings, reference_fingerprint, tokenizer)
    key = identity["key"]
    root = Path(cache_dir or cache_dir_default())
    local = root / "refcache" / key
    if local.exists():
        try:
            return ReferenceCache.load(local, expect={k: identity[k] for k in IDENTITY_FIELDS})
        except CacheMismatchError as err:
            log.warning("discarding reference cache %s: %s", local, err)
            shutil.rmtree(local, ignore_errors=True)
    if client is not None:
        try:
            cache = fetch(key, client, cache_dir=root)
        except CacheMismatchError as err:
            log.warning("reference cache %s in the tracking store is refused: %s", key, err)
            cache = None
        if cache is not None:
            log.info("reference cache %s (%s) fetched from the tracking store, not rebuilt", key, settings.name)
            return cache
    log.info("reference cache %s (%s): building it (reference forward passes over the corpus)", key, settings.name)
    cache = build(model, tokenizer, settings, reference_fingerprint, cache_dir=root)
    if client is not None and publish_new:
        publish(cache, client)
    return cache
