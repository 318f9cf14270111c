"""Benchmarks: what each quant gets right, prompt by prompt.

Public surface (small and stable; see docs/bench.md):

- :class:`TaskConfigError` (a ``ValueError``): unknown task, malformed task file (names the file and the field),
  empty dataset; :class:`PromptTooLongError` (a subclass): a prompt does not fit the model's context.
- :func:`load_task` ``(name) -> Task``: a validated task from the registry (``conf/task/<name>.yaml`` or a directory in
  ``$QUANTFID_TASK_PATH``, or a path to a YAML file); :func:`list_tasks` ``() -> list[str]``.
- :func:`run_tasks` ``(model, tokenizer, task_names, *, max_prompts=None, context_limit=None) -> DataFrame``: one row
  per prompt with the outcome columns of ``quantfid.api.schema`` (``task``, ``prompt_id``, ``prompt_hash``,
  ``output``, ``passed``, ``score``, then ``task_version``, ``prompt``, ``expected``, ``detail``).
- :func:`cached_outcomes` ``(model, tokenizer, fingerprint, task_names, ...)``: the same table, computed once per
  (model fingerprint, task, task version) and cached on disk.
- :func:`run_lm_eval` ``(model, tokenizer, tasks, *, include_path=None, limit=None, ...)``: any lm-evaluation-harness
  task on the in-memory model, as the same outcome table.
- Sandbox: :func:`run_python`, :class:`SandboxLimits`, :func:`isolation` (how code is isolated on this host).
"""

from quantfid.bench.cache import cached_outcomes
from quantfid.bench.lm_eval_adapter import run_lm_eval
from quantfid.bench.registry import Task, TaskConfigError, list_tasks, load_task
from quantfid.bench.runner import PromptTooLongError, run_tasks
from quantfid.bench.sandbox import SandboxLimits, SandboxResult, isolation, run_python

__all__ = [
    "PromptTooLongError",
    "SandboxLimits",
    "SandboxResult",
    "Task",
    "TaskConfigError",
    "cached_outcomes",
    "isolation",
    "list_tasks",
    "load_task",
    "run_lm_eval",
    "run_python",
    "run_tasks",
]
