"""The one outcome cache: a model's per-prompt outcomes on a task, computed once and reused.

Keyed by the model's fingerprint (the reference fingerprint for the reference, the quant fingerprint for a quant: see
quantfid.quant) and the task: ``<cache_dir>/bench/<fingerprint>/<task>/v<version>-<key>.parquet``, where ``<key>``
hashes the task file's resolved content (``Task.spec_hash``, which includes the content of a JSONL data file),
``max_prompts`` and ``context_limit``: editing a task file without bumping its version never serves stale outcomes.
Files are written atomically (quantfid.api.io), so concurrent sweep jobs at worst compute the same outcomes twice and
never read half a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.api.io import write_parquet_atomic
from quantfid.api.paths import cache_dir as default_cache_dir
from quantfid.bench.registry import Task, TaskConfigError, load_task
from quantfid.bench.runner import run_task


def outcome_cache_path(
    fingerprint: str,
    task: Task,
    max_prompts: int | None = None,
    context_limit: int | None = None,
    cache_dir: str | Path | None = None,
    chat_template: bool = False,
) -> Path:
    key = json.dumps([task.spec_hash, max_prompts, context_limit] + (["chat"] if chat_template else []))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "bench" / fingerprint / task.name.replace("/", "__") / f"v{task.version}-{digest}.parquet"


def cached_outcomes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fingerprint: str,
    task_names: Sequence[str],
    *,
    max_prompts: int | None = None,
    context_limit: int | None = None,
    cache_dir: str | Path | None = None,
    chat_template: bool = False,
) -> pd.DataFrame:
    """The outcomes of ``model`` on ``task_names`` (the table of ``run_tasks``): read from the cache, computing and
    caching only the missing tasks. ``fingerprint`` identifies the model (the caller vouches for it)."""
    if not fingerprint or not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must identify the model (a non-empty string), got {fingerprint!r}")
    if isinstance(task_names, str):
        task_names = [task_names]
    if not task_names:
        raise TaskConfigError("no task names given")
    tasks = [load_task(n) for n in task_names]  # every task validated before any model work
    frames = []
    for task in tqdm(tasks, desc="tasks", unit="task", leave=False):
        path = outcome_cache_path(fingerprint, task, max_prompts, context_limit, cache_dir, chat_template)
        if path.is_file():
            frames.append(pd.read_parquet(path))
            continue
        df = run_task(
            model, tokenizer, task, max_prompts=max_prompts, context_limit=context_limit, chat_template=chat_template
        )
        write_parquet_atomic(df, path)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
