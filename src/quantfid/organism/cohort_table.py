"""Quantize a whole cohort once and print its table: effective bits, size, and a cheap span proxy.

``quantfid-organism cohort-table`` (or ``python -m quantfid.organism.cohort_table``) prints, for every config of the
cohort, the backend, effective bits per weight, model bytes and the probe-batch verification. ``--kld N`` adds the
proxy used to choose the cohort: mean token KL(reference || quant) and top-1 agreement on N held-out windows of Python
source the organism never saw; ``--acc K`` adds organism task accuracy on K held-out prompts per task family (slower:
greedy generation).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from quantfid.api.divergence import kl_divergence, log_probs
from quantfid.data import corpus
from quantfid.data.tasks import EVAL_PER_FAMILY
from quantfid.models.loading import ModelSpec, Reference, load_reference
from quantfid.organism.evaluate import score_tasks
from quantfid.quant import QuantUnavailableError, cohort, load_quant_config, quantize, validate_quant_config


def heldout_windows(reference: Reference, n: int, context: int = 256) -> torch.Tensor:
    """``n`` non-overlapping windows of ``context`` tokens of held-out stdlib source (the organism's held-out split)."""
    text = corpus.read_text(corpus.stdlib_files("heldout"), max_chars=n * context * 8)
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * context:
        raise ValueError(f"held-out corpus too short for {n} windows of {context} tokens")
    return torch.tensor(ids[: n * context]).reshape(n, context)


@torch.no_grad()
def logprobs(model: torch.nn.Module, windows: torch.Tensor, batch: int = 8) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [
        log_probs(model(input_ids=windows[i : i + batch].to(device)).logits).cpu()
        for i in range(0, len(windows), batch)
    ]
    return torch.cat(out)


def kld_stats(ref_lp: torch.Tensor, q_lp: torch.Tensor) -> dict[str, float]:
    """Mean token KL(ref || quant) and top-1 agreement; a proxy for the span, not the study's fidelity stage."""
    kld = kl_divergence(ref_lp, q_lp)
    agree = (ref_lp.argmax(-1) == q_lp.argmax(-1)).float()
    return {"kld_mean": kld.mean().item(), "top1_agree": agree.mean().item()}


@dataclass
class Row:
    name: str
    backend: str
    bits_per_weight: float
    model_bytes: int
    model_bits_per_param: float
    kld_mean: float = math.nan
    top1_agree: float = math.nan
    accuracy: float = math.nan
    note: str = ""


def measure(
    names: Sequence[str],
    spec: ModelSpec,
    kld_windows: int = 0,
    acc_per_family: int = 0,
    context: int = 256,
    stream: bool = False,
) -> list[Row]:
    """Quantize (and verify) every config once; GPU-only configs on CPU are reported and left out."""
    reference = load_reference(spec)
    windows = heldout_windows(reference, kld_windows, context) if kld_windows else None
    ref_lp = logprobs(reference.model, windows) if windows is not None else None
    rows = []
    for name in tqdm(names, desc="cohort", unit="quant"):
        cfg = validate_quant_config(load_quant_config(name))
        try:
            q = quantize(spec, cfg, reference)
        except QuantUnavailableError as err:
            tqdm.write(f"skip {name}: {err}", file=sys.stderr)
            continue
        row = Row(
            name,
            cfg.backend,
            q.bits_per_weight,
            q.model_bytes,
            q.verification["model_bits_per_param"],
            note=cfg.note,
        )
        if ref_lp is not None:
            stats = kld_stats(ref_lp, logprobs(q.model, windows))
            row.kld_mean, row.top1_agree = stats["kld_mean"], stats["top1_agree"]
        if acc_per_family:
            row.accuracy = float(score_tasks(q.model, reference.tokenizer, acc_per_family)["passed"].mean())
        rows.append(row)
        if stream:
            tqdm.write(markdown_table([row], header=len(rows) == 1), file=sys.stderr)
        del q
    return rows


def markdown_table(rows: Sequence[Row], header: bool = True) -> str:
    has_kld = any(not math.isnan(r.kld_mean) for r in rows)
    has_acc = any(not math.isnan(r.accuracy) for r in rows)
    head = ["quant", "backend", "bits/weight (quantized Linear)", "model bytes", "bits/param (whole model)"]
    head += ["mean KLD", "top-1 agree"] if has_kld else []
    head += ["task acc"] if has_acc else []
    head += ["what it is"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if header else []
    for r in rows:
        cells = [
            f"`{r.name}`",
            r.backend,
            f"{r.bits_per_weight:.3f}",
            f"{r.model_bytes:,}",
            f"{r.model_bits_per_param:.2f}",
        ]
        cells += [f"{r.kld_mean:.5f}", f"{r.top1_agree:.4f}"] if has_kld else []
        cells += [f"{r.accuracy:.3f}"] if has_acc else []
        cells += [r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantfid-organism cohort-table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", default="organism", help="conf/cohort/<name>.yaml (default: organism)")
    parser.add_argument("--quants", nargs="*", help="explicit quant config names instead of a cohort")
    parser.add_argument("--model", default="organism", help="model name_or_path (default: the shipped organism)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--table", action="store_true", help="print the markdown table (default output)")
    parser.add_argument("--kld", type=int, default=0, metavar="N", help="add mean KLD on N held-out windows")
    parser.add_argument("--context", type=int, default=256, help="window length in tokens for --kld")
    parser.add_argument("--acc", type=int, default=0, metavar="K", help="add task accuracy on K prompts per family")
    parser.add_argument("--sort", choices=["cohort", "kld"], default="cohort")
    parser.add_argument("--stream", action="store_true", help="also write each row to stderr as it is measured")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not 0 <= args.acc <= EVAL_PER_FAMILY:
        parser.error(f"--acc must be between 0 and {EVAL_PER_FAMILY} (the organism's held-out prompts per family)")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.quants or cohort(args.cohort)
    rows = measure(names, ModelSpec(args.model, device=args.device), args.kld, args.acc, args.context, args.stream)
    if args.sort == "kld":
        rows.sort(key=lambda r: (r.kld_mean, r.name))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
