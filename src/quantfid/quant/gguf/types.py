"""The GGUF file types llama.cpp's quantizer makes, and which of them the installed llama.cpp knows.

A file type (``Q4_K_M``) is a recipe: llama.cpp picks a tensor type per tensor (``Q4_K`` for most, ``Q6_K`` for
some attention-V / FFN-down rows, ...). The names are those of ``llama-quantize``. Which names the *installed*
llama.cpp knows is read from llama-cpp-python's ``llama_cpp.py`` (its ``LLAMA_FTYPE_MOSTLY_*`` constants) as text,
without loading the native library, so a config is checked in milliseconds and a broken build cannot crash the check.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

# llama-quantize's names (tools/quantize/quantize.cpp, llama-cpp-python 0.3.36), F32/COPY excluded (not a quant)
KNOWN_TYPES: tuple[str, ...] = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S",
    "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0", "Q2_0", "Q1_0", "MXFP4_MOE", "F16", "BF16",
)  # fmt: skip

# Types whose tensors llama.cpp refuses to make without an importance matrix ("this quantization requires an
# imatrix!", tensor_requires_imatrix in src/llama-quant.cpp) ...
REQUIRES_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S", "IQ3_XXS"})
# ... and those that use one by default here (imatrix: null): every I-quant of 1-3 bits, where llama.cpp's own
# docs say it matters most. K-quants and the 4-bit I-quants are made without one unless asked (imatrix: true).
IMATRIX_BY_DEFAULT = REQUIRES_IMATRIX | {"IQ2_M", "IQ3_XS", "IQ3_S", "IQ3_M"}


def _llama_cpp_module_file() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "llama_cpp.py"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def installed_types() -> tuple[str, ...] | None:
    """The file types the installed llama-cpp-python knows (None: not installed)."""
    path = _llama_cpp_module_file()
    if path is None:
        return None
    return tuple(re.findall(r"^LLAMA_FTYPE_MOSTLY_(\w+)\s*=", path.read_text(), flags=re.M))


def check_type(value: object) -> str | None:
    """A config check: ``type`` must be a file type the installed llama.cpp knows (or, without it, a known name)."""
    if not isinstance(value, str):
        return f"must be a GGUF file type name such as 'Q4_K_M'; known: {list(KNOWN_TYPES)}"
    installed = installed_types()
    if installed is not None:
        if value not in installed:
            return (
                f"the installed llama.cpp (llama-cpp-python) does not know GGUF type {value!r}; it knows "
                f"{[t for t in installed if t != 'GUESSED']}"
            )
        return None
    if value not in KNOWN_TYPES:
        return f"unknown GGUF type {value!r}; known: {list(KNOWN_TYPES)}"
    return None


def uses_imatrix(file_type: str, imatrix: bool | None) -> bool:
    """Whether a quant of ``file_type`` is made with an importance matrix (``imatrix: null`` = this type's default)."""
    return file_type in IMATRIX_BY_DEFAULT if imatrix is None else bool(imatrix)
