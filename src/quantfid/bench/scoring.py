"""Score a causal LM prompt by prompt: greedy generation, choice log-likelihood, execution against tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def choice_loglikelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    batch_size: int = 64,
    desc: str = "choices",
) -> list[list[tuple[float, int]]]:
    """For each prompt, (sum log-prob, token count) of every choice as a continuation of the prompt."""
    pairs = [(p, c) for p, cs in zip(prompts, choices, strict=True) for c in cs]
    prompt_ids = tokenizer([p for p, _ in pairs])["input_ids"]
    choice_ids = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    scores: list[tuple[float, int]] = []
    pad = tokenizer.pad_token_id
    for idx in tqdm(_batches(len(pairs), batch_size), desc=desc, unit="batch", leave=False):
        seqs = [prompt_ids[i] + choice_ids[i] for i in idx]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        logprobs = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logprobs = logprobs.float().log_softmax(-1).cpu()
        for row, i in enumerate(idx):
            start, n = len(prompt_ids[i]), len(choice_ids[i])
            targets = torch.tensor(choice_ids[i])
            lp = logprobs[row, start - 1 : start - 1 + n].gather(-1, targets[:, None]).sum().item()
            scores.append((lp, n))
    out, k = [], 0
    for cs in choices:
        out.append(scores[k : k + len(cs)])
        k += len(cs)
    return out


class _StopOnStrings(StoppingCriteria):
    """Per-row early stop: a row is done once its generated text contains any stop string (or it emitted EOS)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, start: int, stop: Sequence[str]) -> None:
        self.tokenizer, self.start, self.stop = tokenizer, start, tuple(stop)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate_until(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 64,
    context_limit: int | None = None,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions with a KV cache in left-padded batches, each row stopping early at EOS or a stop string,
    each output cut at its first stop string.

    ``context_limit`` caps prompt + completion: a batch generates at most ``context_limit - longest prompt`` tokens
    (the caller checks that every prompt fits; see quantfid.bench.runner).
    """
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for idx in tqdm(_batches(len(prompts), batch_size), desc=desc, unit="batch", leave=False):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(model.device)
            width = enc["input_ids"].shape[1]
            room = max_new_tokens if context_limit is None else min(max_new_tokens, context_limit - width)
            if room <= 0:
                outputs.extend("" for _ in idx)
                continue
            gen = model.generate(
                **enc,
                max_new_tokens=room,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([_StopOnStrings(tokenizer, width, stop)]) if stop else None,
            )
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            outputs.extend(cut_at_stop(t, stop) for t in texts)
    finally:
        tokenizer.padding_side = side
    return outputs
