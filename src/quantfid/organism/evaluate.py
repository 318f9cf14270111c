"""Evaluate a model on the organism's held-out task sets and held-out code, prompt by prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.bench.sandbox import check_function
from quantfid.bench.scoring import choice_loglikelihoods, generate_greedy
from quantfid.organism import corpus, tasks

EVAL_PER_FAMILY = 200
EVAL_SEED = 1234


def heldout_instances(n_per_family: int = EVAL_PER_FAMILY, families: Sequence[str] | None = None):
    return [i for f in (families or tasks.FAMILIES) for i in tasks.heldout_set(f, n_per_family, EVAL_SEED)]


def score_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instances: Sequence[tasks.TaskInstance],
    max_new_tokens: int = 32,
) -> pd.DataFrame:
    """One row per prompt: family, prompt id and hash, the model's output and whether it passed."""
    gen = [i for i in instances if i.scoring in ("exact", "execute")]
    mc = [i for i in instances if i.scoring == "choice"]
    outputs = dict(
        zip(
            (i.prompt_hash for i in gen),
            generate_greedy(model, tokenizer, [i.prompt for i in gen], max_new_tokens, desc="generate"),
            strict=True,
        )
    )
    picks: dict[str, int] = {}
    if mc:
        lls = choice_loglikelihoods(model, tokenizer, [i.prompt for i in mc], [i.choices for i in mc])
        for inst, ll in zip(mc, lls, strict=True):
            picks[inst.prompt_hash] = max(range(len(ll)), key=lambda k: ll[k][0])
    rows = []
    for n, inst in enumerate(tqdm(instances, desc="score", unit="prompt", leave=False)):
        if inst.scoring == "choice":
            output = inst.choices[picks[inst.prompt_hash]]
            passed = picks[inst.prompt_hash] == inst.answer_index
        elif inst.scoring == "execute":
            output = outputs[inst.prompt_hash]
            passed = bool(output.strip()) and check_function(output, list(inst.tests)).passed
        else:
            output = outputs[inst.prompt_hash]
            passed = output.strip() == inst.answer.strip()
        rows.append(
            {
                "task": f"organism/{inst.family}",
                "prompt_id": n,
                "prompt_hash": inst.prompt_hash,
                "output": output,
                "expected": inst.answer,
                "passed": bool(passed),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def heldout_code_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 65536, context: int = 256
) -> float:
    """Token-mean perplexity on the held-out stdlib files, in non-overlapping windows of ``context`` tokens."""
    text = corpus.read_text(corpus.stdlib_files("heldout"), max_chars=max_tokens * 6)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    nll, count = 0.0, 0
    for start in tqdm(range(0, len(ids) - 1, context), desc="held-out ppl", unit="window", leave=False):
        window = torch.tensor([ids[start : start + context]], device=model.device)
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
        nll += loss.item()
        count += window.shape[1] - 1
    return math.exp(nll / count)


def summarize(outcomes: pd.DataFrame) -> dict[str, float]:
    """Accuracy per task family and overall (mean over prompts)."""
    per = outcomes.groupby("task")["passed"].mean().to_dict()
    return {**{k: float(v) for k, v in per.items()}, "overall": float(outcomes["passed"].mean())}
