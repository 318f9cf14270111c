"""GGUF files of the reference: exported once, quantized by llama.cpp's own quantizer, cached, and read back.

Cache layout under ``<cache>/gguf/<reference fingerprint>/`` (``quantfid.api.paths.cache_dir()``):
``source-<F32|F16>-v<export version>.gguf`` (the export), ``imatrix-<key>.gguf`` and
``<type>-<source>-<imatrix hash or none>.gguf`` (a quant: keyed by the reference, the type and the imatrix's content).
Quantization runs in a child process (``_child.py``): a crash in native code is an error message, not a dead sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from quantfid.api.paths import cache_dir
from quantfid.models.loading import Reference
from quantfid.quant.base import QuantUnavailableError
from quantfid.quant.gguf.export import EXPORT_VERSION, arch_of, export_gguf, is_tied
from quantfid.quant.gguf.types import installed_types

CHILD = Path(__file__).with_name("_child.py")
BUILD_HINT = (
    "install the portable build of llama-cpp-python: scripts/setup.sh builds it into .whl/ with "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" '
    "(docs/quant.md, GGUF)"
)


def require_gguf(what: str) -> None:
    """Refuse clearly when the gguf package (reads and writes GGUF files) is not installed."""
    try:
        import gguf  # noqa: F401  (a check only)
    except ImportError as err:
        raise QuantUnavailableError(
            f"{what} needs the gguf package (the gguf extra): pip install gguf==0.19.0"
        ) from err


def require_llama_cpp(what: str) -> None:
    """Refuse clearly when llama-cpp-python or gguf is not installed (the ``gguf`` extra)."""
    if installed_types() is None:
        raise QuantUnavailableError(f"{what} needs llama-cpp-python (the gguf extra): {BUILD_HINT}")
    require_gguf(what)


def gguf_cache(reference: Reference) -> Path:
    return cache_dir() / "gguf" / reference.fingerprint


def run_child(command: str, payload: dict, what: str, timeout: float = 600.0, script: Path = CHILD) -> dict:
    """Run ``script`` (``_child.py``) and return its JSON result; a crash or a failure is a
    :class:`QuantUnavailableError`."""
    try:
        proc = subprocess.run(
            [sys.executable, str(script), command, json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        )
    except subprocess.TimeoutExpired as err:
        raise QuantUnavailableError(f"{what}: llama.cpp did not finish within {timeout:.0f} s") from err
    result = next(
        (json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("QUANTFID_RESULT ")),
        None,
    )
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise QuantUnavailableError(
            f"{what}: llama.cpp crashed ({sig}) in a child process; this llama-cpp-python build does not run on this "
            f"CPU: {BUILD_HINT}. Last output: {(proc.stderr or proc.stdout)[-400:].strip()!r}"
        )
    if result is None or not result.get("ok"):
        tail = (proc.stderr or proc.stdout)[-800:].strip()
        raise QuantUnavailableError(f"{what}: llama.cpp failed (exit {proc.returncode}): {tail or result}")
    return result


def source_file(reference: Reference, outtype: str) -> Path:
    """The reference exported to GGUF (``outtype`` F32 or F16), written once per reference."""
    arch_of(reference.model)  # refuses an unmapped architecture before anything is written
    path = gguf_cache(reference) / f"source-{outtype}-v{EXPORT_VERSION}.gguf"
    if not path.is_file():
        export_gguf(reference.model, reference.tokenizer, path, outtype=outtype, name=reference.spec.name_or_path)
    return path


def quantize_file(
    reference: Reference, file_type: str, outtype: str, imatrix: tuple[Path, str] | None, nthread: int = 0
) -> tuple[Path, float]:
    """The ``file_type`` quant of the reference (cached); returns (path, seconds spent quantizing, 0 when cached)."""
    src = source_file(reference, outtype)
    tag = imatrix[1] if imatrix else "none"
    dst = gguf_cache(reference) / f"{file_type}-{outtype}-{tag}.gguf"
    if dst.is_file():
        return dst, 0.0
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    payload = {"src": str(src), "dst": str(tmp), "type": file_type, "nthread": nthread}
    if imatrix:
        payload["imatrix"] = str(imatrix[0])
    try:
        result = run_child("quantize", payload, f"GGUF quantization to {file_type}")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst, float(result["seconds"])


@dataclass
class FileFacts:
    """What a GGUF file holds: architecture, sizes, the stored type of every tensor, and the vocabulary."""

    arch: str
    metadata: dict[str, object]
    tensor_types: dict[str, str]  # GGUF tensor name -> ggml type name
    tensor_bytes: dict[str, int]
    tensor_numel: dict[str, int]
    tokens: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.tensor_bytes.values())


def _field_value(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:
        return None


def read_facts(path: Path, with_tokens: bool = False) -> FileFacts:
    """Read a GGUF file's header (no tensor data is copied)."""
    from gguf import GGUFReader  # deferred: optional dependency (the gguf extra)

    reader = GGUFReader(str(path))
    arch = str(_field_value(reader, "general.architecture") or "")
    meta = {}
    for key in reader.fields:
        if key.startswith(f"{arch}.") or key in ("general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
            meta[key] = _field_value(reader, key)
    facts = FileFacts(
        arch=arch,
        metadata=meta,
        tensor_types={t.name: t.tensor_type.name for t in reader.tensors},
        tensor_bytes={t.name: int(t.n_bytes) for t in reader.tensors},
        tensor_numel={t.name: int(t.n_elements) for t in reader.tensors},
    )
    if with_tokens:
        facts.tokens = [str(t) for t in (_field_value(reader, "tokenizer.ggml.tokens") or [])]
    return facts


REFERENCE_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def linear_facts(reference: Reference, facts: FileFacts) -> tuple[dict[str, str], float, dict[str, object]]:
    """Per reference Linear its stored type; bits per weight over the Linear weights stored otherwise than the
    reference holds them (F16 is a quant of an F32 reference); details."""
    model = reference.model
    ref_type = REFERENCE_TYPES.get(reference.spec.dtype, "F32")
    arch = arch_of(model)
    names = arch.linear_map(model.config.num_hidden_layers, is_tied(model))
    if is_tied(model):  # the output projection is the token embedding: stored (and counted) as token_embd
        names["token_embd.weight"] = "lm_head"
    missing = sorted(g for g in names if g not in facts.tensor_types)
    if missing:
        raise QuantUnavailableError(f"the GGUF file lacks tensors {missing[:4]} of the reference's Linear layers")
    types = {h: facts.tensor_types[g] for g, h in names.items()}
    quantized = [g for g, h in names.items() if types[h] != ref_type]
    weights = sum(facts.tensor_numel[g] for g in quantized)
    bits = sum(facts.tensor_bytes[g] * 8 for g in quantized)
    n_params = sum(facts.tensor_numel.values())
    mix: dict[str, int] = {}
    for g in names:
        mix[facts.tensor_types[g]] = mix.get(facts.tensor_types[g], 0) + facts.tensor_numel[g]
    details = {
        "quantized_weights": weights,
        "model_bits_per_param": facts.total_bytes * 8 / n_params,
        "gguf_tensor_types": {k: mix[k] for k in sorted(mix)},
        "gguf_token_embd_type": facts.tensor_types.get("token_embd.weight", ""),
        "reference_type": ref_type,
    }
    bpw = bits / weights if weights else 0.0
    return types, bpw, details
