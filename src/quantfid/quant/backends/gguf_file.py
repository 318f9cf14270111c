"""The user's own .gguf file as a quant of their transformers reference (``quant=gguf_file quant.path=...``).

Before anything runs, the file must be the reference's model: the same llama.cpp architecture, the same shapes
(width, layers, heads, FFN, vocabulary size) and the same vocabulary, token by token, in id order (quantfid feeds the
reference tokenizer's ids: a file with another vocabulary would be scored on the wrong tokens). Otherwise one clear
refusal names the first difference.
"""

from __future__ import annotations

import functools
from pathlib import Path

from quantfid.models.loading import ModelSpec, Reference
from quantfid.quant.base import BackendResult
from quantfid.quant.config import QuantConfig
from quantfid.quant.gguf.export import arch_of, vocabulary
from quantfid.quant.gguf.imatrix import file_sha256
from quantfid.quant.gguf.load import file_quant
from quantfid.quant.gguf.quantize import read_facts, require_gguf, require_llama_cpp
from quantfid.quant.gguf.runtime import RUNTIMES
from quantfid.quant.registry import register
from quantfid.quant.schema import BackendSchema, Option, QuantConfigError

GGUF_MAGIC = b"GGUF"


def check_path(value: object) -> str | None:
    if not isinstance(value, str) or not value or value == "???":  # ??? : conf/quant/gguf_file.yaml's placeholder
        return "is required: give the .gguf file, e.g. quantfid-sweep quant=gguf_file quant.path=/path/to/model.gguf"
    path = Path(value).expanduser()
    if not path.is_file():
        return f"no such file ({path.resolve()}); give the path of a .gguf file"
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            return f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')"
    return None


def file_digest(value: str) -> str:
    """The file's content hash: a quant's identity (run skip, outcome and cache keys) follows the bytes, so a file
    replaced at the same path is a new quant, never a cached one. Memoised on (path, size, mtime): a multi-GB file is
    read once per process."""
    path = Path(value).expanduser().resolve()
    st = path.stat()
    return _digest(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


SCHEMA = BackendSchema(
    "gguf_file",
    (
        Option("path", str, check=check_path, doc="the .gguf file (a quant of the reference)"),
        Option("runtime", str, default="llama_cpp", choices=RUNTIMES, doc="llama.cpp kernels or dequantized in torch"),
    ),
    doc="a GGUF file made elsewhere, checked against the reference (architecture, shapes, vocabulary)",
    identity=lambda o: file_digest(str(o["path"])),
)


def check_matches_reference(path: Path, reference: Reference) -> None:
    """Refuse a file that is not a quant of ``reference``: architecture, shapes, then the vocabulary."""
    facts = read_facts(path, with_tokens=True)
    arch = arch_of(reference.model)
    if facts.arch != arch.gguf_arch:
        raise QuantConfigError(
            f"quant.path={str(path)!r}: the file's architecture is {facts.arch!r} but the reference "
            f"({type(reference.model).__name__}) is {arch.gguf_arch!r}: not a quant of this reference"
        )
    cfg = reference.model.config
    n_vocab = reference.model.get_input_embeddings().weight.shape[0]
    want = {
        "embedding_length": cfg.hidden_size,
        "block_count": cfg.num_hidden_layers,
        "feed_forward_length": cfg.intermediate_size,
        "attention.head_count": cfg.num_attention_heads,
        "attention.head_count_kv": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
    }
    for key, value in want.items():
        got = facts.metadata.get(f"{facts.arch}.{key}")
        if got is not None and int(got) != int(value):
            raise QuantConfigError(
                f"quant.path={str(path)!r}: {facts.arch}.{key}={got} but the reference has {value}: "
                "not a quant of this reference"
            )
    ref_tokens = vocabulary(reference.tokenizer, n_vocab).tokens
    if len(facts.tokens) != len(ref_tokens):
        raise QuantConfigError(
            f"quant.path={str(path)!r}: the file's vocabulary has {len(facts.tokens)} tokens, the reference's "
            f"{len(ref_tokens)}: not the reference's vocabulary"
        )
    diff = next((i for i, (a, b) in enumerate(zip(facts.tokens, ref_tokens, strict=True)) if a != b), None)
    if diff is not None:
        raise QuantConfigError(
            f"quant.path={str(path)!r}: vocabulary mismatch at token id {diff}: the file has {facts.tokens[diff]!r}, "
            f"the reference tokenizer {ref_tokens[diff]!r}; quantfid feeds the reference's token ids, so the file "
            "must use the same vocabulary in the same order"
        )


@register(SCHEMA)
def gguf_file_backend(spec: ModelSpec, cfg: QuantConfig, reference: Reference) -> BackendResult:
    o = cfg.options
    what = f"quant={cfg.name!r} (backend gguf_file)"
    require_llama_cpp(what) if o["runtime"] == "llama_cpp" else require_gguf(what)
    path = Path(o["path"]).expanduser().resolve()
    check_matches_reference(path, reference)
    return file_quant(
        spec, cfg, reference, path, {"gguf_file_type": read_facts(path).metadata.get("general.file_type")}
    )
