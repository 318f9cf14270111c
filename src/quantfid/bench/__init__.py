"""Benchmarks: what each quant gets right, prompt by prompt.

Public surface (small and stable; see docs/bench.md):

- :class:`TaskConfigError` (a ``ValueError``): unknown task, malformed task file (names the file and the field),
  empty dataset; :class:`PromptTooLongError` (a subclass): a prompt does not fit the model's context.
- :func:`load_task` ``(name) -> Task``: a validated task from the registry (``conf/task/<name>.yaml`` or a directory in
  ``$QUANTFID_TASK_PATH``, or a path to a YAML file); :func:`list_tasks` ``() -> list[str]``.
- :func:`run_tasks` ``(model, tokenizer, task_names, *, max_prompts=None, context_limit=None) -> DataFrame``: one row
  per prompt with ``task``, ``prompt_id`` (str), ``prompt_hash``, ``output``, ``passed`` (bool), ``score`` (float), then
  ``task_version``, ``prompt``, ``expected``, ``detail``. The sweep adds ``kld_prompt``/``kld_completion``
  (:data:`FIDELITY_COLUMNS`) with the fidelity engine, using the ``prompt`` column.
- :func:`reference_outcomes` ``(model, tokenizer, fingerprint, task_names, ...)``: the same table for the reference,
  computed once per (reference fingerprint, task, task version) and cached on disk (``$QUANTFID_CACHE``).
- :func:`summarize` ``(outcomes) -> {"bench.<task>.acc": ..., "bench.<task>.n": ..., "bench.composite.acc": ...}``.
- :func:`run_lm_eval` ``(model, tokenizer, tasks, *, include_path=None, limit=None, ...)``: any lm-evaluation-harness
  task on the in-memory model, as the same outcome table.
- Sandbox: :func:`run_python`, :class:`SandboxLimits`, :func:`isolation` (how code is isolated on this host).
"""

from quantfid.bench.cache import reference_outcomes
from quantfid.bench.lm_eval_adapter import run_lm_eval
from quantfid.bench.registry import Task, TaskConfigError, list_tasks, load_task
from quantfid.bench.runner import (
    EXTRA_COLUMNS,
    FIDELITY_COLUMNS,
    OUTCOME_COLUMNS,
    PromptTooLongError,
    run_tasks,
    summarize,
)
from quantfid.bench.sandbox import SandboxLimits, SandboxResult, isolation, run_python

__all__ = [
    "EXTRA_COLUMNS",
    "FIDELITY_COLUMNS",
    "OUTCOME_COLUMNS",
    "PromptTooLongError",
    "SandboxLimits",
    "SandboxResult",
    "Task",
    "TaskConfigError",
    "isolation",
    "list_tasks",
    "load_task",
    "reference_outcomes",
    "run_lm_eval",
    "run_python",
    "run_tasks",
    "summarize",
]
