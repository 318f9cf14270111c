"""The reference's outcomes, computed once per (reference fingerprint, task, task version) and reused.

Stored under ``$QUANTFID_CACHE`` (default ``~/.cache/quantfid``) as
``bench/<fingerprint>/<task>/v<version>-<key>.parquet`` where ``<key>`` hashes the task file's resolved content
(``Task.spec_hash``), ``max_prompts`` and ``context_limit``: editing a task file without bumping its version never
serves stale outcomes. Files are written to a temporary name and renamed into place (atomic on one filesystem), so
concurrent sweep jobs at worst compute the same outcomes twice and never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.bench.registry import Task, load_task
from quantfid.bench.runner import run_task


def cache_root() -> Path:
    return Path(os.environ.get("QUANTFID_CACHE") or Path.home() / ".cache" / "quantfid")


def outcome_cache_path(
    fingerprint: str, task: Task, max_prompts: int | None = None, context_limit: int | None = None
) -> Path:
    key = json.dumps([task.spec_hash, max_prompts, context_limit])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "bench" / fingerprint / task.name.replace("/", "__") / f"v{task.version}-{digest}.parquet"


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reference_outcomes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fingerprint: str,
    task_names: Sequence[str],
    *,
    max_prompts: int | None = None,
    context_limit: int | None = None,
) -> pd.DataFrame:
    """The reference's outcomes on ``task_names``: read from the cache, computing (and caching) only missing tasks.

    ``fingerprint`` is the reference fingerprint (quantfid.models.model_fingerprint); the caller vouches that
    ``model`` is that reference.
    """
    if not fingerprint or not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be the reference fingerprint (a non-empty string), got {fingerprint!r}")
    frames = []
    for task in [load_task(n) for n in task_names]:
        path = outcome_cache_path(fingerprint, task, max_prompts, context_limit)
        if path.is_file():
            frames.append(pd.read_parquet(path))
            continue
        df = run_task(model, tokenizer, task, max_prompts=max_prompts, context_limit=context_limit)
        write_parquet_atomic(df, path)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
