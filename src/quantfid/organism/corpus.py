"""The organism's text: the running interpreter's own standard-library sources.

Files are split into train and held-out by a hash of their relative path, so the split is stable across runs and
machines with the same Python version. Held-out files are never trained on; they serve as the held-out code
perplexity of the model card and as the fidelity stage's code corpus.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

HELDOUT_BUCKETS = 10  # path hash % HELDOUT_BUCKETS == 0 -> held out
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_id() -> str:
    """Names the corpus: it depends on the interpreter's version, which the stdlib sources follow."""
    return f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def stdlib_files(split: str) -> list[Path]:
    """Sorted stdlib ``.py`` files of one split (``train`` or ``heldout``), tests and vendored trees excluded."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS.intersection(rel.parts):
            continue
        bucket = int(hashlib.sha256(rel.as_posix().encode()).hexdigest(), 16) % HELDOUT_BUCKETS
        if (bucket == 0) == (split == "heldout"):
            out.append(path)
    return out


def read_text(paths: list[Path], max_chars: int | None = None) -> str:
    """Concatenated file contents (undecodable bytes replaced), cut at ``max_chars``."""
    parts: list[str] = []
    total = 0
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    joined = "\n".join(parts)
    return joined[:max_chars] if max_chars is not None else joined
