"""Cross-check: quantfid's fidelity numbers for a GGUF quant against llama.cpp's own statistics, on the same tokens.

``quantfid-organism gguf-check --quants gguf_q8_0 gguf_q4_k_m gguf_q2_k`` measures each quant (runtime llama_cpp)
twice on the same windows of the same corpus:

- **quantfid**: the fidelity stage (``measure``) against the cached torch reference, exact full-vocabulary
  log-probabilities (``fidelity.exact=true``), float64;
- **llama.cpp**: ``llama-perplexity --kl-divergence``'s statistics as its source computes them
  (:mod:`quantfid.quant.gguf.llama_stats`): the base run is the F32 GGUF through llama.cpp's kernels, stored in 16
  bits per token; the quant run through the same kernels. The printed log goes through the ``--kld-log`` import
  (:func:`quantfid.analysis.external.parse_kld_log`), as a real llama-perplexity log would.

The perplexity tool itself is not built by llama-cpp-python; the logits come from the same llama.cpp library it
links. The difference between the two columns is the effect of llama.cpp's 16-bit base storage (and of float32
sums), which the table states per statistic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from quantfid.analysis.external import parse_kld_log
from quantfid.api.paths import cache_dir, conf_dir
from quantfid.fidelity import FidelitySettings, get_or_build, measure
from quantfid.models.loading import ModelSpec, load_reference
from quantfid.quant import load_quant_config, quantize
from quantfid.quant.gguf.llama_stats import format_log, kld_sums
from quantfid.quant.gguf.quantize import source_file
from quantfid.quant.gguf.runtime import LlamaCppModel

COMPARED = ("kld_mean", "top1_agree", "ln_ppl_ratio")


def crosscheck(spec: ModelSpec, quants: list[str], settings: FidelitySettings) -> list[dict[str, float | str]]:
    """One row per quant: each statistic from quantfid, from llama.cpp's formulas, and llama.cpp's standard error."""
    reference = load_reference(spec)
    cache = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, cache_dir())
    tokens, lengths = np.asarray(cache.array("tokens")), np.asarray(cache.array("lengths"))
    windows = [tokens[i, : lengths[i]] for i in range(cache.n_windows)]
    base = LlamaCppModel(source_file(reference, "F32"), reference.model.config)
    base_logits = [base.sequence_logits(w.tolist()) for w in tqdm(windows, desc="llama.cpp base", leave=False)]
    del base
    rows = []
    for name in quants:
        q = quantize(spec, load_quant_config(name), reference)
        if not isinstance(q.model, LlamaCppModel):
            raise SystemExit(f"error: quant={name!r} does not run on llama.cpp (runtime must be llama_cpp)")
        quant_logits = [q.model.sequence_logits(w.tolist()) for w in tqdm(windows, desc=name, leave=False)]
        # the fidelity stage reads the same llama.cpp logits (each window evaluated once: llama.cpp's prompt
        # evaluation is the slow part here)
        q.model.sequence_logits = _memo(q.model.sequence_logits, windows, quant_logits)
        ours = measure(q.model, cache, tokenizer=reference.tokenizer, progress=False)
        if not ours.ok:
            raise SystemExit(f"error: quant={name!r}: {ours.error}")
        theirs = parse_kld_log(format_log(kld_sums(base_logits, quant_logits, windows)), source=name)
        row: dict[str, float | str] = {"quant": name, "n_tokens": ours.metrics["fid.n_tokens"]}
        for stat in COMPARED:
            row[f"{stat}.quantfid"] = ours.metrics[f"fid.{stat}"]
            row[f"{stat}.llama_cpp"] = theirs[stat]
            row[f"{stat}.llama_cpp_se"] = theirs.get(f"{stat}_se", math.nan)
        del q
        deq = _dequantized_kld(spec, f"{name}_tf", reference, cache)
        if deq is not None:
            row["kld_mean.dequantized"] = deq  # same file, same windows, weights dequantized into torch
        rows.append(row)
    return rows


def _dequantized_kld(spec: ModelSpec, name: str, reference, cache) -> float | None:
    """Mean KLD of the same file through transformers (config ``name``: the GGUF weights dequantized into torch) on
    the cache's windows, or None when there is no such config. Against quantfid's llama.cpp column it is paired
    token by token: the difference is what llama.cpp's kernels add (activation quantization in the dot products)."""
    if not (conf_dir() / "quant" / f"{name}.yaml").is_file():
        return None
    q = quantize(spec, load_quant_config(name), reference)
    res = measure(q.model, cache, tokenizer=reference.tokenizer, progress=False)
    if not res.ok:
        raise SystemExit(f"error: quant={name!r}: {res.error}")
    return float(res.metrics["fid.kld_mean"])


def _memo(evaluate: Callable[[list[int]], np.ndarray], windows: list[np.ndarray], logits: list[np.ndarray]):
    """``evaluate`` answering the given windows from their already computed logits."""
    seen = {tuple(int(t) for t in w): lg for w, lg in zip(windows, logits, strict=True)}

    def lookup(ids: list[int]) -> np.ndarray:
        key = tuple(int(t) for t in ids)
        return seen[key] if key in seen else evaluate(ids)

    return lookup


def markdown(rows: list[dict[str, float | str]]) -> str:
    head = ["quant", "tokens"]
    for stat in COMPARED:
        head += [f"{stat} quantfid", f"{stat} llama.cpp (± se)", "diff / se"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['quant']}`", f"{int(r['n_tokens'])}"]
        for stat in COMPARED:
            a, b, se = float(r[f"{stat}.quantfid"]), float(r[f"{stat}.llama_cpp"]), float(r[f"{stat}.llama_cpp_se"])
            cells += [f"{a:.6f}", f"{b:.6f} ± {se:.6f}", f"{(b - a) / se:+.2f}" if se > 0 else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    paired = [r for r in rows if "kld_mean.dequantized" in r]
    if paired:
        lines += ["", "| quant | tokens | KLD through llama.cpp's kernels | KLD dequantized into torch (`_tf`) | "
                  "kernels add |", "|---|---|---|---|---|"]
        for r in paired:
            a, b = float(r["kld_mean.quantfid"]), float(r["kld_mean.dequantized"])
            rel = f" ({(a - b) / b:+.0%})" if b > 0 else ""
            lines.append(f"| `{r['quant']}` | {int(r['n_tokens'])} | {a:.6f} | {b:.6f} | {a - b:+.6f}{rel} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantfid-organism gguf-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quants", nargs="+", default=["gguf_q8_0", "gguf_q4_k_m", "gguf_q2_k"])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--corpus", default="code")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    settings = FidelitySettings(corpus=args.corpus, context=args.context, max_tokens=args.max_tokens, exact=True)
    rows = crosscheck(ModelSpec(args.model), args.quants, settings)
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
