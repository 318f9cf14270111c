"""Fidelity memory benchmark: peak resident memory of building a reference cache and measuring one quant, for
growing corpus lengths, each in a fresh process (so one length's peak cannot hide another's).

    python benchmarks/fidelity_memory.py [--tokens 8192,32768,131072] [--corpus code]

Streaming means the peak should stay flat as the corpus grows: what may grow is the per-token output (7 numbers per
scored token) and the cache on disk, not the logits. Prints, per length, the peak RSS after loading the model, after
the cache build and after ``measure``, and the growth against the shortest corpus.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import copy, json, resource, sys, tempfile
import torch
from quantfid.fidelity import FidelitySettings, build_cache, measure
from quantfid.models.loading import ModelSpec, load_reference
from quantfid.quant.backends.rtn import rtn_quantize_

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

tokens, corpus, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
ref = load_reference(ModelSpec("organism"))
quant = copy.deepcopy(ref.model)
rtn_quantize_(quant, 4, 64)
out = {"tokens": tokens, "after_load_mb": peak_mb()}
settings = FidelitySettings(corpus=corpus, context=256, max_tokens=tokens)
cache = build_cache(ref.model, ref.tokenizer, settings, ref.fingerprint, root)
out["after_cache_mb"] = peak_mb()
res = measure(quant, cache, tokenizer=ref.tokenizer, progress=False)
assert res.ok, res.error
out["after_measure_mb"] = peak_mb()
out["scored_tokens"] = int(res.per_token["kld"].size)
out["cache_mb"] = cache.nbytes() / 2**20
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="8192,32768,131072", help="corpus lengths (tokens), comma-separated")
    ap.add_argument("--corpus", default="code")
    args = ap.parse_args()
    rows = []
    for n in (int(t) for t in args.tokens.split(",")):
        with tempfile.TemporaryDirectory() as root:
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), args.corpus, root], capture_output=True, text=True, check=False
            )
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("| corpus tokens | scored tokens | cache on disk | peak RSS after load | after cache build | after measure |"
          " growth vs shortest |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tokens']:,} | {r['scored_tokens']:,} | {r['cache_mb']:.1f} MiB | {r['after_load_mb']:.0f} MiB | "
            f"{r['after_cache_mb']:.0f} MiB | {r['after_measure_mb']:.0f} MiB | "
            f"{r['after_measure_mb'] - base['after_measure_mb']:+.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
