"""An importance matrix computed from the calibration corpus, written in the GGUF format llama.cpp's tools read.

What ``llama-imatrix`` collects, computed here with torch forward hooks on the reference: for every weight matrix,
the sum over calibration tokens of the squared input activation of each input column (``<tensor>.in_sum2``) and the
number of tokens (``<tensor>.counts``); the quantizer weighs each column's rounding error by ``in_sum2 / counts``.
The file is GGUF with ``general.type = imatrix`` and the ``imatrix.datasets`` / ``imatrix.chunk_count`` /
``imatrix.chunk_size`` keys, as tools/imatrix/imatrix.cpp writes it, so ``llama-quantize --imatrix`` reads it too.
The calibration text is held-in Python source (the organism's training split, as GPTQ's calibration): never the
held-out text fidelity and the benchmarks use.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from quantfid.data import corpus
from quantfid.models.loading import Reference
from quantfid.quant.gguf.export import arch_of, is_tied
from quantfid.quant.schema import QuantConfigError

IMATRIX_VERSION = 1


def calibration_chunks(reference: Reference, n_chunks: int, chunk_size: int) -> torch.Tensor:
    """``n_chunks`` windows of ``chunk_size`` tokens of held-in stdlib source, each starting with BOS (as llama.cpp's
    imatrix tool starts every chunk)."""
    tok = reference.tokenizer
    chars = n_chunks * chunk_size * 4
    files = corpus.stdlib_files("train")
    while True:
        text = corpus.read_text(files, max_chars=chars)
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= n_chunks * (chunk_size - 1) or len(text) < chars:
            break
        chars *= 2
    body = chunk_size - 1
    if len(ids) < n_chunks * body:
        raise QuantConfigError(
            f"quant.imatrix_chunks={n_chunks}: the calibration corpus holds only {len(ids) // body} chunks of "
            f"{chunk_size} tokens"
        )
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rows = [[bos, *ids[i * body : (i + 1) * body]] for i in range(n_chunks)]
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def collect(reference: Reference, chunks: torch.Tensor, batch: int = 8) -> dict[str, tuple[np.ndarray, int]]:
    """GGUF tensor name -> (sum of squared inputs per input column, float64; token count), over ``chunks``."""
    model = reference.model
    arch = arch_of(model)
    names = arch.linear_map(model.config.num_hidden_layers, is_tied(model))
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []

    def hook(gname: str):
        def fn(_module, inputs, _output) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[gname] = sums.get(gname, 0) + (x * x).sum(0).cpu()
            counts[gname] = counts.get(gname, 0) + x.shape[0]

        return fn

    for gname, hname in names.items():
        handles.append(modules[hname].register_forward_hook(hook(gname)))
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(chunks), batch), desc="imatrix", unit="batch", leave=False):
            model(input_ids=chunks[start : start + batch].to(device))
    finally:
        for h in handles:
            h.remove()
    return {g: (sums[g].numpy(), counts[g]) for g in names}


def write_imatrix(stats: dict[str, tuple[np.ndarray, int]], path: Path, dataset: str, chunk_size: int) -> Path:
    """The GGUF imatrix file (atomically: a temporary name, then renamed)."""
    import gguf  # deferred: optional dependency (the gguf extra)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch="")  # no architecture: general.type says what the file is
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    n_tokens = max(c for _, c in stats.values())
    w.add_uint32("imatrix.chunk_count", int(n_tokens // chunk_size))
    w.add_uint32("imatrix.chunk_size", int(chunk_size))
    for name, (s, c) in sorted(stats.items()):
        w.add_tensor(f"{name}.in_sum2", s.astype(np.float32).reshape(1, -1))  # ne = (n_cols, 1 expert)
        w.add_tensor(f"{name}.counts", np.array([[float(c)]], dtype=np.float32))  # ne = (1, 1 expert)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def imatrix_key(reference_fingerprint: str, n_chunks: int, chunk_size: int) -> str:
    """Identity of an imatrix: the reference, the calibration corpus and how much of it."""
    payload = f"{IMATRIX_VERSION}|{reference_fingerprint}|{corpus.corpus_id()}|{n_chunks}|{chunk_size}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def get_or_build_imatrix(reference: Reference, cache: Path, n_chunks: int, chunk_size: int) -> tuple[Path, str]:
    """The imatrix file of ``reference`` (built once, then read from ``cache``) and its content hash."""
    limit = int(getattr(reference.model.config, "max_position_embeddings", chunk_size) or chunk_size)
    size = min(chunk_size, limit)
    path = cache / f"imatrix-{imatrix_key(reference.fingerprint, n_chunks, size)}.gguf"
    if not path.is_file():
        chunks = calibration_chunks(reference, n_chunks, size)
        write_imatrix(collect(reference, chunks), path, f"quantfid:stdlib-train:{corpus.corpus_id()}", size)
    return path, file_sha256(path)[:16]
