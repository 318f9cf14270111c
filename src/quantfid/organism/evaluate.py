"""Evaluate a model on the organism's held-out task sets and held-out code, prompt by prompt."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quantfid.api.schema import COMPOSITE, bench_metric, bench_metrics
from quantfid.bench.runner import run_tasks
from quantfid.data import corpus, tasks
from quantfid.data.tasks import EVAL_PER_FAMILY


def score_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n_per_family: int = EVAL_PER_FAMILY,
    families: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per prompt (task, prompt id and hash, output, passed, ...) on the first ``n_per_family`` held-out
    prompts of each family, through the bench task registry (conf/task/organism/): the organism card, the cohort
    table and the sweep score prompts with one code path."""
    if not 1 <= n_per_family <= EVAL_PER_FAMILY:
        raise ValueError(
            f"n_per_family={n_per_family}: the organism's held-out sets have {EVAL_PER_FAMILY} prompts per family; "
            f"pick 1..{EVAL_PER_FAMILY}"
        )
    names = [f"organism/{f}" for f in (families or tasks.FAMILIES)]
    return run_tasks(model, tokenizer, names, max_prompts=n_per_family)


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
    """Accuracy per task family and overall (mean over prompts): the schema's ``bench.<task>.acc`` metrics, keyed
    by task name for the card."""
    metrics = bench_metrics(outcomes)
    per = {str(t): metrics[bench_metric(str(t), "acc")] for t in sorted(outcomes["task"].unique())}
    return {**per, "overall": metrics[bench_metric(COMPOSITE, "acc")]}
