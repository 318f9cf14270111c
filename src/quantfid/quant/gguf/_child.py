"""Native llama.cpp work in a child process: a crash in native code (a segfault of a CPU-specific build) ends this
process, never the sweep. Run as a script (``python _child.py <command> <json>``), not as a module, so it imports
only the standard library, numpy, gguf and llama_cpp (no torch: it starts in a fraction of a second).

Commands: ``quantize`` (llama.cpp's quantizer, with an importance matrix read from a GGUF imatrix file) and
``probe`` (load a GGUF file with llama.cpp's CPU kernels and evaluate a few tokens). Each prints one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time


def load_imatrix(path: str) -> dict[str, list[float]]:
    """llama-quantize's reading of a GGUF imatrix file: per tensor, ``in_sum2 / counts`` (per expert; 1 where no
    token reached it), as ``load_imatrix`` in tools/quantize/quantize.cpp."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(path)
    sums, counts = {}, {}
    for t in reader.tensors:
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = data
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = data
    out = {}
    for name, s in sums.items():
        c = counts[name]
        per = s.reshape(len(c), -1)
        e = np.where(c[:, None] > 0, per / np.maximum(c[:, None], 1), 1.0).astype(np.float32)
        out[name] = e.reshape(-1)
    return out


def quantize(args: dict) -> dict:
    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{args['type']}")
    params.nthread = int(args.get("nthread") or 0)
    keep = []  # the arrays must outlive the call
    if args.get("imatrix"):
        entries = load_imatrix(args["imatrix"])
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(sorted(entries.items())):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(buf)
            arr[i].name = name.encode()
            arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = buf.size
        arr[len(entries)].name = None  # the list ends at a null name
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(args["src"].encode(), args["dst"].encode(), ctypes.byref(params))
    return {"ok": rc == 0, "rc": int(rc), "seconds": time.perf_counter() - t0}


def probe(args: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=args["path"],
        n_ctx=int(args["n_ctx"]),
        n_batch=int(args["n_ctx"]),
        n_ubatch=int(args["n_ctx"]),
        n_threads=int(args.get("n_threads") or 1),
        logits_all=True,
        verbose=False,
    )
    ids = [int(i) for i in args["ids"]]
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    return {"ok": bool(np.isfinite(logits).all()), "n_vocab": int(logits.shape[1]), "sum": float(np.abs(logits).sum())}


def main() -> int:
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    result = {"quantize": quantize, "probe": probe}[command](payload)
    sys.stdout.write("QUANTFID_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
