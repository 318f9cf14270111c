"""The ``task_prompts`` corpus source: the calibration prompts of any registry task (organism families, JSONL tasks,
HumanEval, lm-eval tasks) as a fidelity corpus.

It joins two stages (the bench's calibration split, the fidelity stage's corpus registry), which may not import each
other, so it is registered here, in the application layer, when the sweep is imported:

    fidelity.corpus={source: task_prompts, tasks: [humaneval], name: humaneval}

Documents are each task's calibration prompts (``quantfid.bench.calibration.calibration_instances``: never an
evaluation prompt of that task, checked by prompt hash), each followed by its expected answer (``answers: true``, as
the built-in ``tasks`` corpus packs the organism's), interleaved task by task so that any token budget covers every
task. ``n`` caps the prompts per task (default: the task's whole calibration split).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

from quantfid.bench.calibration import calibration_instances
from quantfid.bench.registry import TaskConfigError
from quantfid.fidelity import FidelityError
from quantfid.fidelity.corpora import corpus_source


@corpus_source(
    "task_prompts",
    required=("tasks",),
    optional={"n": None, "answers": True},
    doc="the calibration prompts of registry tasks (tasks: [names]), answers appended",
)
def task_prompts(spec: dict[str, Any]) -> Iterator[str]:
    names = spec["tasks"]
    names = [names] if isinstance(names, str) else list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise FidelityError(f"fidelity.corpus.tasks={spec['tasks']!r} must be a task name or a list of task names")
    n = spec.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise FidelityError(f"fidelity.corpus.n={n!r} must be a positive integer (prompts per task) or null")
    per_task = []
    for name in names:
        try:
            prompts = calibration_instances(name, n)
        except TaskConfigError as err:
            raise FidelityError(f"fidelity.corpus.tasks: {err}") from err
        per_task.append([p.text + (p.expected if spec.get("answers", True) else "") for p in prompts])
    return (doc for group in zip_longest(*per_task) for doc in group if doc is not None)
