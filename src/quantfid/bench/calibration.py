"""Calibration prompts of any registry task: the prompts fidelity metrics are computed on, never evaluation prompts.

A fidelity number that is computed on the very prompts whose outcomes make the benchmark score is partly the score
itself; quantfid keeps the two apart, per task, by prompt hash:

- organism families (``source.type: organism``): a separate seeded, versioned draw of the family's held-out prompts
  (:func:`quantfid.data.tasks.calibration_set`: ``CALIBRATION_SEED``, ``CALIBRATION_VERSION``), with the task's own
  evaluation set excluded by prompt hash;
- every other task (JSONL, HumanEval, lm-eval): a deterministic split of the task's prompts by prompt hash
  (:func:`quantfid.bench.registry.in_calibration_split`, ``source.calibration_fraction``, default 1/8); the
  evaluation side (:func:`quantfid.bench.sources.load_prompts`, the lm-eval adapter) leaves those prompts out.

Either way :func:`calibration_instances` checks the result against the task's evaluation prompts and raises
:class:`CalibrationOverlapError` on any shared prompt hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.api.io import write_parquet_atomic
from quantfid.api.paths import cache_dir as default_cache_dir
from quantfid.bench.registry import Task, TaskConfigError, load_task
from quantfid.bench.runner import run_task
from quantfid.bench.sources import Prompt, all_prompts, is_calibration, load_prompts, organism_prompts, prompt_hash
from quantfid.data import tasks as organism_tasks


class CalibrationOverlapError(TaskConfigError):
    """A calibration prompt is also an evaluation prompt of the same task (same prompt hash)."""


def assert_disjoint(task_name: str, calibration: Iterable[Prompt], evaluation: Iterable[Prompt]) -> None:
    """Raise :class:`CalibrationOverlapError` when the two prompt lists share a prompt hash (or a prompt text)."""
    calibration, evaluation = list(calibration), list(evaluation)
    clash = sorted({p.prompt_hash for p in calibration} & {p.prompt_hash for p in evaluation})
    clash += sorted({p.text for p in calibration} & {p.text for p in evaluation})
    if clash:
        raise CalibrationOverlapError(
            f"task {task_name!r}: {len(clash)} calibration prompt(s) are also evaluation prompts "
            f"(e.g. {clash[0]!r}); calibration and evaluation must be disjoint by prompt hash"
        )


def _organism(task: Task, n: int | None) -> list[Prompt]:
    src = task.source
    evaluation = organism_tasks.heldout_set(src["family"], src["n"], src["seed"])
    draw = organism_tasks.calibration_set(
        src["family"], n or organism_tasks.CALIBRATION_PER_FAMILY, exclude={i.prompt_hash for i in evaluation}
    )
    return organism_prompts(draw, id_prefix="cal")


def _lm_eval_prompts(task: Task) -> list[Prompt]:
    """Zero-shot contexts of an lm-eval task's evaluation documents, as lm-eval builds them (doc_to_text)."""
    src = task.source
    if src.get("num_fewshot"):
        raise TaskConfigError(
            f"task {task.name!r}: calibration prompts of an lm-eval task are built zero-shot; "
            f"source.num_fewshot={src['num_fewshot']} is not supported here (set it to 0 or null)"
        )
    from lm_eval.tasks import TaskManager, get_task_dict  # optional extra 'bench': imported only for lm-eval tasks

    manager = TaskManager(include_path=src.get("include_path")) if src.get("include_path") else TaskManager()
    lm_task = get_task_dict([src["task"]], manager)[src["task"]]
    delim = str(getattr(lm_task.config, "target_delimiter", " "))  # lm-eval scores delimiter + choice
    out = []
    for i, doc in enumerate(lm_task.eval_docs):
        text = str(lm_task.doc_to_text(doc))
        target = lm_task.doc_to_target(doc)
        multiple = lm_task.OUTPUT_TYPE == "multiple_choice"
        choices = tuple(delim + str(c) for c in lm_task.doc_to_choice(doc)) if multiple else ()
        index = int(target) if choices and isinstance(target, int) else -1
        expected = choices[index] if index >= 0 else str(target)
        out.append(Prompt(str(i), text, prompt_hash(task.name, text), expected, choices, index))
    return out


def calibration_instances(task_name: str, n: int | None = None) -> list[Prompt]:
    """The calibration prompts of registry task ``task_name`` (at most ``n`` of them; organism: exactly ``n``,
    default ``CALIBRATION_PER_FAMILY``), each with its expected answer (and choices), fixed and versioned.

    Raises :class:`TaskConfigError` for a task without calibration prompts (``calibration_fraction: 0``) and
    :class:`CalibrationOverlapError` if any of them is also an evaluation prompt.
    """
    if n is not None and n <= 0:
        raise TaskConfigError(f"calibration_instances: n must be a positive integer or None, got {n!r}")
    task = load_task(task_name)
    kind = task.source["type"]
    if kind == "organism":
        calibration = _organism(task, n)
        evaluation = load_prompts(task)
    else:
        everything = _lm_eval_prompts(task) if kind == "lm_eval" else all_prompts(task)
        calibration = [p for p in everything if is_calibration(task, p.prompt_hash)]
        evaluation = [p for p in everything if not is_calibration(task, p.prompt_hash)]
        if n is not None:
            calibration = calibration[:n]
    if not calibration:
        raise TaskConfigError(
            f"task {task.name!r} ({task.path}) has no calibration prompts: its source.calibration_fraction is "
            f"{task.source.get('calibration_fraction')!r} or its data is too small; raise the fraction"
        )
    assert_disjoint(task.name, calibration, evaluation)
    return calibration


def calibration_hashes(task_name: str, n: int | None = None) -> set[str]:
    """Prompt hashes of the task's calibration prompts (what evaluation must never contain)."""
    return {p.prompt_hash for p in calibration_instances(task_name, n)}


def calibration_outcomes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fingerprint: str,
    task_names: Sequence[str],
    *,
    n: int | None = None,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Outcomes of ``model`` on the calibration prompts of ``task_names`` (the outcome table of ``run_tasks``, scored
    by each task's own scoring, greedy), cached under ``<cache_dir>/calibration/<fingerprint>/`` by the task's
    ``spec_hash`` and the calibration prompts' hashes. lm-eval-scored tasks cannot be scored on given prompts."""
    if not fingerprint:
        raise ValueError("fingerprint must identify the model (a non-empty string)")
    frames = []
    for name in tqdm(list(task_names), desc="calibration outcomes", unit="task", leave=False):
        task = load_task(name)
        prompts = calibration_instances(name, n)
        key = json.dumps([task.spec_hash, [p.prompt_hash for p in prompts]])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = root / "calibration" / fingerprint / task.name.replace("/", "__") / f"v{task.version}-{digest}.parquet"
        if path.is_file():
            frames.append(pd.read_parquet(path))
            continue
        df = run_task(model, tokenizer, task, prompts=prompts)
        write_parquet_atomic(df, path)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
