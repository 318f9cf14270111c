"""lm-evaluation-harness on the in-memory (already quantized) model, per-sample results -> the outcome table.

The model is wrapped in lm-eval's ``HFLM`` (which accepts a ``PreTrainedModel`` instance), so a quant built by
quantfid is evaluated as it is in memory, never re-loaded. Each logged sample becomes one outcome row: ``prompt_id``
is lm-eval's ``doc_id``, ``output`` the filtered response (for log-likelihood tasks: the chosen continuation),
``score`` the per-sample value of the task's metric and ``passed`` whether it is >= 1 (accuracy-like metrics).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.bench.registry import Task, TaskConfigError
from quantfid.bench.sources import is_calibration, prompt_hash

log = logging.getLogger(__name__)


def _output_of(sample: dict[str, Any]) -> str:
    resps = sample["filtered_resps"]
    if resps and all(isinstance(r, (tuple, list)) and len(r) == 2 for r in resps):  # loglikelihood per choice
        lls = [float(r[0]) for r in resps]
        pick = max(range(len(lls)), key=lambda k: lls[k])
        return str(sample["arguments"][pick][1])
    first = resps[0] if isinstance(resps, list) and resps else resps
    return first if isinstance(first, str) else str(first)


def _expected_of(sample: dict[str, Any]) -> str:
    """The target as text: for multiple choice lm-eval logs the right choice's index, so give its continuation."""
    target, args = sample["target"], sample["arguments"]
    if isinstance(target, int) and len(args) > 1 and 0 <= target < len(args):
        return str(args[target][1])
    return str(target)


def _metric_of(sample: dict[str, Any], wanted: str) -> str:
    names = list(sample.get("metrics", []))
    if wanted:
        if wanted not in names:
            raise TaskConfigError(f"scoring.metric {wanted!r} is not a metric of this lm-eval task; it has {names}")
        return wanted
    if not names:
        raise TaskConfigError("the lm-eval task logged no per-sample metric; set scoring.metric")
    return names[0]


def samples_to_outcomes(
    samples: dict[str, list[dict[str, Any]]], metric: str = "", prefix: str = "lm_eval/", version: int = 1
) -> pd.DataFrame:
    """lm-eval's ``results['samples']`` (one list of logged samples per task) as outcome rows."""
    rows = []
    for task_name, task_samples in samples.items():
        for sample in sorted(task_samples, key=lambda s: s["doc_id"]):
            name = _metric_of(sample, metric)
            value = float(sample[name])
            context = str(sample["arguments"][0][0])
            rows.append(
                {
                    "task": f"{prefix}{task_name}",
                    "prompt_id": str(sample["doc_id"]),
                    "prompt_hash": prompt_hash(f"{prefix}{task_name}", context),
                    "output": _output_of(sample),
                    "passed": bool(not math.isnan(value) and value >= 1.0 - 1e-9),
                    "score": value,
                    "task_version": version,
                    "prompt": context,
                    "expected": _expected_of(sample),
                    "detail": name,
                }
            )
    if not rows:
        raise TaskConfigError(f"lm-eval returned no samples for {list(samples)}: is the dataset empty?")
    return pd.DataFrame(rows)


def run_lm_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    metric: str = "",
) -> pd.DataFrame:
    """Run lm-eval ``tasks`` on ``model`` as it is in memory; one outcome row per sample (task ``lm_eval/<name>``)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise TaskConfigError(
            f"unknown lm-eval task(s) {unknown}"
            + (f" (include_path={include_path})" if include_path else "")
            + ": check the name, or point source.include_path at the directory holding its YAML"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=True,
        task_manager=manager,
        bootstrap_iters=0,
        verbosity="WARNING",
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank?)")
    return samples_to_outcomes(results["samples"], metric=metric)


def run_lm_eval_task(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, *, max_prompts: int | None = None
) -> pd.DataFrame:
    """A registry task of ``source.type: lm_eval``; rows are named after the registry task. Calibration prompts
    (quantfid.bench.calibration: the hash split) are dropped from the outcomes (``max_prompts`` counts before)."""
    src = task.source
    df = run_lm_eval(
        model,
        tokenizer,
        [src["task"]],
        include_path=src.get("include_path"),
        limit=max_prompts,
        num_fewshot=src.get("num_fewshot"),
        batch_size=task.generation.batch_size,
        metric=task.scoring.metric,
    )
    df["task"] = task.name
    df["task_version"] = task.version
    df["prompt_hash"] = [prompt_hash(task.name, p) for p in df["prompt"]]
    keep = [not is_calibration(task, h) for h in df["prompt_hash"]]
    if not any(keep):
        raise TaskConfigError(f"task {task.name!r}: every sample is a calibration prompt; lower calibration_fraction")
    return df[keep].reset_index(drop=True)
