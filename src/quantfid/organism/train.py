"""Train the model organism: a small `LlamaForCausalLM` on stdlib code plus a packed task curriculum.

Recipe (what was measured to work on 2 CPU cores, see docs/organism.md): a byte-level BPE with one token per
digit; sequences of 256 tokens that are either a stdlib chunk (loss on every token) or packed task instances (loss
on answer tokens only); Muon on the transformer's matrices with its Newton-Schulz maths in float32 (the stock
bfloat16 path is ~2x slower on CPUs without native bf16), AdamW on embeddings, head and norms; warm-up, a flat
stretch and a linear cool-down.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.optim._muon as _muon
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quantfid.data import corpus, tasks
from quantfid.data.tokenizer import train_tokenizer


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (logged next to them)."""

    seed: int = 0
    steps: int = 12000
    max_minutes: float | None = None  # stop early on wall-clock; the schedule follows whichever ends first
    batch_size: int = 16
    seq_len: int = 256
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    vocab_size: int = 2048
    text_fraction: float = 0.2
    muon_lr: float = 0.02
    muon_weight_decay: float = 0.1  # keeps weight (and attention-logit) scale bounded under Muon
    adam_lr: float = 3e-3
    warmup_steps: int = 100
    cooldown_fraction: float = 0.3
    threads: int = 2
    init_from: str | None = None  # continue from a saved organism (its tokenizer and architecture win)
    tokenizer_chars: int = 4_000_000
    text_chars: int | None = None  # cap on stdlib text read (None: all of the train split); for quick tests
    task_text_samples: int = 20000  # task instances mixed into the tokenizer's training text


def _newton_schulz_float32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch's Muon orthogonalisation, kept in float32 (same iteration, same coefficients)."""
    a, b, c = ns_coefficients
    x = grad.float()
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def make_model_config(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class Batcher:
    """Builds training batches: stdlib chunks (full loss) or packed task instances (answer loss only)."""

    def __init__(self, cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast, text_ids: np.ndarray) -> None:
        self.cfg = cfg
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        self.text_ids = text_ids
        self.rng = random.Random(cfg.seed)
        self.stream = tasks.training_stream(cfg.seed)
        self.pending: list[tuple[str, list[int], list[int]]] = []

    def _refill(self, n: int = 512) -> None:
        insts = [next(self.stream) for _ in range(n)]
        prompts = self.tok([i.prompt for i in insts], add_special_tokens=False)["input_ids"]
        answers = self.tok([i.answer for i in insts], add_special_tokens=False)["input_ids"]
        self.pending.extend(zip([i.family for i in insts], prompts, answers, strict=True))

    def _task_row(self) -> tuple[list[int], list[int], list[tuple[str, int, int]]]:
        ids, mask, spans = [self.eos], [0], []
        while True:
            if not self.pending:
                self._refill()
            family, p, a = self.pending[-1]
            item = p + a + [self.eos]
            if len(item) + 1 > self.cfg.seq_len + 1:  # can never fit, even in an empty row: drop it
                self.pending.pop()
                continue
            if len(ids) + len(item) > self.cfg.seq_len + 1:
                break
            self.pending.pop()
            start = len(ids) + len(p)
            ids += item
            mask += [0] * len(p) + [1] * (len(a) + 1)
            spans.append((family, start, start + len(a) + 1))
        pad = self.cfg.seq_len + 1 - len(ids)
        return ids + [self.eos] * pad, mask + [0] * pad, spans

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[str, int, int]]]]:
        rows, masks, spans = [], [], []
        n = self.cfg.seq_len + 1
        for _ in range(self.cfg.batch_size):
            if self.rng.random() < self.cfg.text_fraction:
                start = self.rng.randrange(len(self.text_ids) - n)
                rows.append(self.text_ids[start : start + n].tolist())
                masks.append([1] * n)
                spans.append([])
            else:
                r, m, s = self._task_row()
                rows.append(r)
                masks.append(m)
                spans.append(s)
        return torch.tensor(rows), torch.tensor(masks, dtype=torch.bool), spans


def _lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if progress < 1 - cfg.cooldown_fraction:
        return 1.0
    return max(0.02, (1 - progress) / cfg.cooldown_fraction)


def train(cfg: TrainConfig, out_dir: Path, log_every: int = 50, save_every: int = 300) -> dict:
    """Train (from scratch, or on from ``cfg.init_from``) and save model, tokenizer and ``training.json``."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    _muon._zeropower_via_newtonschulz = _newton_schulz_float32
    out_dir.mkdir(parents=True, exist_ok=True)

    text = corpus.read_text(corpus.stdlib_files("train"), max_chars=cfg.text_chars)
    task_text = "\n".join(
        i.prompt + i.answer for i in itertools.islice(tasks.training_stream(cfg.seed + 1), cfg.task_text_samples)
    )
    if cfg.init_from:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg.init_from)
        model = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        previous = Path(cfg.init_from) / "training.json"
        earlier = json.loads(previous.read_text()) if previous.exists() else None
    else:
        tokenizer = train_tokenizer([text[: cfg.tokenizer_chars], task_text], vocab_size=cfg.vocab_size)
        model = LlamaForCausalLM(make_model_config(cfg, tokenizer))
        earlier = None
    model.train()
    text_ids = np.array(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)

    matrices = [p for n, p in model.model.layers.named_parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if all(p is not m for m in matrices)]
    optimizers = [
        torch.optim.Muon(matrices, lr=cfg.muon_lr, momentum=0.95, weight_decay=cfg.muon_weight_decay),
        torch.optim.AdamW(others, lr=cfg.adam_lr, betas=(0.9, 0.95), weight_decay=0.0),
    ]
    base_lrs = [cfg.muon_lr, cfg.adam_lr]
    batcher = Batcher(cfg, tokenizer, text_ids)
    history: list[dict] = []
    started = time.time()
    bar = tqdm(total=cfg.steps, desc="train organism", unit="step")
    running: dict[str, list[float]] = {}
    steps_done = 0  # optimizer steps taken (the loop can end by its count or by the wall-clock budget)
    for step in range(cfg.steps):
        elapsed = (time.time() - started) / 60
        progress = step / cfg.steps
        if cfg.max_minutes:
            progress = max(progress, elapsed / cfg.max_minutes)
        if progress >= 1:
            break
        for opt, lr in zip(optimizers, base_lrs, strict=True):
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(progress, step, cfg)
        x, mask, spans = batcher.batch()
        logits = model(input_ids=x[:, :-1]).logits.float()
        target = x[:, 1:]
        tok_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        m = mask[:, 1:]
        loss = (tok_loss * m).sum() / m.sum().clamp(min=1)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps_done += 1
        with torch.no_grad():
            right = logits.argmax(-1) == target
            text_rows = [i for i, s in enumerate(spans) if not s]
            if text_rows:
                running.setdefault("text_loss", []).append(tok_loss[text_rows].mean().item())
            for i, row in enumerate(spans):
                for family, a, b in row:
                    running.setdefault(family, []).append(float(right[i, a - 1 : b - 1].all()))
        bar.update(1)
        if (step + 1) % log_every == 0:
            stats = {k: float(np.mean(v)) for k, v in running.items()}
            running = {}
            record = {"step": step + 1, "minutes": round(elapsed, 2), "loss": round(loss.item(), 4), **stats}
            history.append(record)
            bar.set_postfix(loss=f"{loss.item():.3f}", text=f"{stats.get('text_loss', math.nan):.2f}")
            tqdm.write(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}))
        if (step + 1) % save_every == 0:
            model.save_pretrained(out_dir / "checkpoint", safe_serialization=True)
            tokenizer.save_pretrained(out_dir / "checkpoint")
    bar.close()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "train_config": asdict(cfg),
        "steps_done": steps_done,
        "minutes": round((time.time() - started) / 60, 2),
        "tokens_seen": steps_done * cfg.batch_size * cfg.seq_len,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": corpus.corpus_id(),
        "tasks_version": tasks.TASKS_VERSION,
        "torch": torch.__version__,
        "history": history,
        "continued_from": earlier and {k: v for k, v in earlier.items() if k != "history"},
    }
    (out_dir / "training.json").write_text(json.dumps(meta, indent=1))
    return meta
