"""Fidelity benchmark: top-K cache error vs exact (choice of K), P1 (measure cost vs a bare forward pass), P2 (size).

    python benchmarks/fidelity_bench.py --model organism --out fidelity_bench.json

- Layout table: for each corpus and each RTN quant (8/4/3/2-bit, group 64), the relative error of mean KLD (both
  directions) of compressed caches (K head tokens + M tail samples; M=0 is the plain top-K + tail-bucket cache)
  against the exact full-vocabulary computation; one forward pass per (corpus, quant), every layout derived from the
  same logits with the same code as the cache builder and ``measure``. The default layout is also checked end to
  end (a real cache on disk, ``measure``) on the first corpus.
- P1: ``measure`` (forward + cache read + per-token arrays + every aggregation) vs a bare forward pass of the same
  quant over the same windows and batches, interleaved, median of ``--repeats``.
- P2: bytes of the top-K cache on disk vs a 16-bit full-vocabulary dump of the same tokens (llama.cpp's layout).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantfid.api.divergence import log_probs
from quantfid.fidelity import FidelitySettings, build_cache, measure
from quantfid.fidelity.cache import ReferenceCache, batch_input, pad_id, scored_rows
from quantfid.fidelity.metrics import per_token_exact, per_token_topk, sample_tail, tail_logmass
from quantfid.models.loading import ModelSpec, load_reference
from quantfid.quant.backends.rtn import rtn_quantize_


def rtn_quant(model: torch.nn.Module, bits: int, group: int = 64) -> torch.nn.Module:
    q = copy.deepcopy(model)
    rtn_quantize_(q, bits, group)
    return q


@torch.no_grad()
def topk_errors(quant, exact: ReferenceCache, configs: list[tuple[int, int]], pad: int, seed: int = 0) -> dict:
    """Mean KLD (both directions) from the exact cache and, for each (K, M), from its compression: the K-token head,
    the tail mass and M tail samples, derived from the same full log-probs with the same code as the cache builder
    (``sample_tail``) and ``measure`` (``per_token_topk``). One forward pass of the quant."""
    m = exact.manifest
    tokens, lengths, offsets = exact.array("tokens"), exact.array("lengths"), exact.array("row_offsets")
    sums = {"exact": np.zeros(2), **{c: np.zeros(2) for c in configs}}
    tail_mass = dict.fromkeys(configs, 0.0)
    n = 0
    bs = int(m["batch_size"])
    for start in range(0, exact.n_windows, bs):
        stop = min(start + bs, exact.n_windows)
        lens = np.asarray(lengths[start:stop])
        ids, mask = batch_input(tokens[start:stop], lens, pad)
        rows, targets = scored_rows(quant(input_ids=ids, attention_mask=mask).logits, ids, lens, m["scored_fraction"])
        lq = log_probs(rows)
        lp = torch.from_numpy(np.array(exact.array("full_lp")[offsets[start] : offsets[stop]])).double()
        per = per_token_exact(lq, targets, lp)
        sums["exact"] += [per["kld"].sum().item(), per["kld_rev"].sum().item()]
        tgt_lp = lp.gather(-1, targets[:, None])[:, 0]
        for k, ms in configs:
            top_lp, top_ids = lp.topk(k, dim=-1)
            tail = tail_logmass(lp, top_ids).float().double()
            sids = sample_tail(lp, top_ids, ms, torch.Generator().manual_seed(seed + start)) if ms else None
            slp = lp.gather(-1, sids) if ms else None
            tk = per_token_topk(lq, targets, top_ids, top_lp, tail, tgt_lp, sids, slp)
            sums[(k, ms)] += [tk["kld"].sum().item(), tk["kld_rev"].sum().item()]
            tail_mass[(k, ms)] += tail.exp().sum().item()
        n += len(targets)
    ex = sums["exact"] / n
    out = {"kld_mean": ex[0], "kld_rev_mean": ex[1], "n_tokens": n, "by_config": {}}
    for c in configs:
        v = sums[c] / n
        out["by_config"][f"K{c[0]}+M{c[1]}"] = {
            "kld_mean": v[0],
            "rel_err": (v[0] - ex[0]) / ex[0],
            "rel_err_rev": (v[1] - ex[1]) / ex[1],
            "mean_tail_mass": tail_mass[c] / n,
        }
    return out


def config_bytes(exact: ReferenceCache, k: int, m: int) -> int:
    """Array bytes of a (K, M) cache of the same tokens: uint16 ids + float32 log-probs for head and samples, tail
    mass and true-token log-prob per scored token, the window tokens (uint16), lengths and offsets (no headers)."""
    n = exact.n_scored
    return n * (k + m) * (2 + 4) + n * (4 + 4) + exact.n_windows * (int(exact.manifest["context"]) * 2 + 4 + 8) + 8


@torch.no_grad()
def p1(quant, cache: ReferenceCache, tokenizer, repeats: int) -> dict:
    """Side by side, interleaved: bare forward over the cache's windows vs the whole ``measure`` call."""
    m = cache.manifest
    bs = int(m["batch_size"])
    tokens, lengths = np.asarray(cache.array("tokens")), np.asarray(cache.array("lengths"))
    batches = [
        batch_input(tokens[s : s + bs], lengths[s : s + bs], pad_id(tokenizer)) for s in range(0, len(tokens), bs)
    ]

    def bare() -> float:
        t = time.perf_counter()
        for ids, mask in batches:
            quant(input_ids=ids, attention_mask=mask).logits  # noqa: B018
        return time.perf_counter() - t

    def full() -> float:
        t = time.perf_counter()
        r = measure(quant, cache, tokenizer=tokenizer, progress=False)
        assert r.ok, r.error
        return time.perf_counter() - t

    bare(), full()  # warm-up
    tb, tm = [], []
    for _ in range(repeats):
        tb.append(bare())
        tm.append(full())
    b, f = statistics.median(tb), statistics.median(tm)
    return {
        "bare_s": b,
        "measure_s": f,
        "ratio": f / b,
        "bare_all": tb,
        "measure_all": tm,
        "tokens": int(lengths.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="organism", help="reference: 'organism' or a checkpoint directory")
    ap.add_argument("--corpora", default="code,prose,tasks")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--bits", default="8,4,3,2")
    ap.add_argument("--configs", default="32+0,64+0,16+16,8+22", help="(K head + M tail samples) cache layouts")
    ap.add_argument("--topk", type=int, default=8, help="default K: checked end to end on disk and timed (P1/P2)")
    ap.add_argument("--tail-samples", type=int, default=22, help="default M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    ref = load_reference(ModelSpec(args.model))
    tok = ref.tokenizer
    configs = [tuple(int(x) for x in c.split("+")) for c in args.configs.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    quants = {f"rtn_w{b}g64": rtn_quant(ref.model, b) for b in bits}
    corpora = args.corpora.split(",")
    results: dict = {"model": args.model, "context": args.context, "max_tokens": args.max_tokens, "corpora": {}}
    with tempfile.TemporaryDirectory() as root:
        for corpus in corpora:
            base = FidelitySettings(
                corpus=corpus,
                context=args.context,
                topk=args.topk,
                tail_samples=args.tail_samples,
                max_tokens=args.max_tokens,
            )
            exact = build_cache(ref.model, tok, dataclasses.replace(base, exact=True), ref.fingerprint, root)
            t0 = time.perf_counter()
            cache = build_cache(ref.model, tok, base, ref.fingerprint, root)
            entry: dict = {
                "n_scored": exact.n_scored,
                "vocab": exact.vocab_size,
                "cache_bytes": cache.nbytes(),
                "exact_cache_bytes": exact.nbytes(),
                "full16_dump_bytes": cache.full_dump_nbytes(),
                "size_ratio": cache.nbytes() / cache.full_dump_nbytes(),
                "cache_build_s": time.perf_counter() - t0,
                "config_size_ratio": {
                    f"K{k}+M{m}": config_bytes(exact, k, m) / cache.full_dump_nbytes() for k, m in configs
                },
                "quants": {},
            }
            for name, q in quants.items():
                e = topk_errors(q, exact, configs, pad_id(tok))
                if corpus == corpora[0]:  # the default cache end to end: on disk, through measure()
                    r_c = measure(q, cache, tokenizer=tok, progress=False)
                    e["end_to_end"] = {
                        "kld_mean": r_c.metrics["fid.kld_mean"],
                        "rel_err": r_c.metrics["fid.kld_mean"] / e["kld_mean"] - 1,
                        "rel_err_rev": r_c.metrics["fid.kld_rev_mean"] / e["kld_rev_mean"] - 1,
                        "ppl_ratio": r_c.metrics["fid.ppl_ratio"],
                        "top1_agree": r_c.metrics["fid.top1_agree"],
                    }
                entry["quants"][name] = e
                print(
                    f"{corpus:6s} {name:10s} kld_mean exact={e['kld_mean']:.5f} "
                    + " ".join(f"{c}:{v['rel_err'] * 100:+.2f}%" for c, v in e["by_config"].items())
                    + (f" | end-to-end: {e['end_to_end']['rel_err'] * 100:+.3f}%" if "end_to_end" in e else ""),
                    flush=True,
                )
            if corpus == corpora[0]:
                entry["p1"] = p1(quants[f"rtn_w{bits[min(1, len(bits) - 1)]}g64"], cache, tok, args.repeats)
                print(f"P1 {corpus}.{args.context}: {json.dumps(entry['p1'])}", flush=True)
            print(
                f"P2 {corpus}.{args.context}: K={args.topk}+M={args.tail_samples} cache {entry['cache_bytes']} B vs "
                f"16-bit full dump {entry['full16_dump_bytes']} B = {entry['size_ratio'] * 100:.2f}%",
                flush=True,
            )
            results["corpora"][corpus] = entry
    print_tables(results, [f"K{k}+M{m}" for k, m in configs])
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=float))


def print_tables(results: dict, configs: list[str]) -> None:
    """Markdown tables for docs/fidelity.md: relative error of mean KLD (forward / reverse) and size per layout."""
    print("\n| corpus | quant | exact mean KLD | " + " | ".join(configs) + " |")
    print("|---|---|---|" + "---|" * len(configs))
    for corpus, entry in results["corpora"].items():
        for name, e in entry["quants"].items():
            cells = " | ".join(
                f"{e['by_config'][c]['rel_err'] * 100:+.2f}% / {e['by_config'][c]['rel_err_rev'] * 100:+.2f}%"
                for c in configs
            )
            print(f"| {corpus} | {name} | {e['kld_mean']:.5f} | {cells} |")
        sizes = " | ".join(f"{entry['config_size_ratio'][c] * 100:.2f}%" for c in configs)
        tails = " | ".join(
            f"{next(iter(entry['quants'].values()))['by_config'][c]['mean_tail_mass']:.3f}" for c in configs
        )
        print(f"| {corpus} | size vs 16-bit dump | | {sizes} |")
        print(f"| {corpus} | mean tail mass | | {tails} |")
    print()
    for c, e in results["corpora"].items():
        print(
            f"P2 {c}: {e['cache_bytes'] / 1e6:.3f} MB vs {e['full16_dump_bytes'] / 1e6:.3f} MB "
            f"= {e['size_ratio'] * 100:.2f}% (exact float32 cache {e['exact_cache_bytes'] / 1e6:.2f} MB)"
        )
        for name, q in e["quants"].items():
            if "end_to_end" in q:
                ee = q["end_to_end"]
                print(
                    f"end-to-end {c} {name}: rel err {ee['rel_err'] * 100:+.3f}% / rev {ee['rel_err_rev'] * 100:+.3f}%"
                )
        if "p1" in e:
            p = e["p1"]
            print(f"P1 {c}: bare forward {p['bare_s']:.3f}s, measure {p['measure_s']:.3f}s, ratio {p['ratio']:.3f}x")


if __name__ == "__main__":
    main()
