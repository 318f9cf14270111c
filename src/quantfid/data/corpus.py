"""Built-in text corpora, all present on a fresh machine without any download.

- ``code``: the running interpreter's own standard-library sources, split into train and held-out by a hash of each
  file's relative path (stable across runs and machines with the same Python version). The organism trains on the
  train split; the held-out split is its held-out code perplexity and the fidelity stage's ``code`` corpus.
- ``prose``: the English license texts that Debian's ``base-files`` package (Essential: on every Debian/Ubuntu system
  and image) installs under ``/usr/share/common-licenses`` (GPL, LGPL, Apache, MPL, GFDL, Artistic, CC0, BSD; about
  260 kB): legal English, not general prose, but the English text that is reliably present. ``$QUANTFID_PROSE_DIR``
  names another directory of plain-text files.
- ``tasks``: the organism's calibration prompts (``quantfid.data.tasks.calibration_instances``: a seeded draw of each
  family's held-out prompts, disjoint by prompt hash from every evaluation prompt) with their expected answers, packed
  like its training stream, in a fixed shuffled order so that any token budget covers every family. (Before
  calibration version 1 it was built from the evaluation prompts themselves.)
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from quantfid.data import tasks

BUILTIN_CORPORA = ("code", "prose", "tasks")
PROSE_DIR = Path("/usr/share/common-licenses")


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the corpus, what was wrong and what to do."""

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
    return list(_stdlib_files(split, stdlib_root()))


@functools.lru_cache(maxsize=8)
def _stdlib_files(split: str, root: Path) -> tuple[Path, ...]:
    """Memoised per interpreter tree: walking and hashing every stdlib path costs ~0.7 s and a sweep asks often."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS.intersection(rel.parts):
            continue
        bucket = int(hashlib.sha256(rel.as_posix().encode()).hexdigest(), 16) % HELDOUT_BUCKETS
        if (bucket == 0) == (split == "heldout"):
            out.append(path)
    return tuple(out)


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


def prose_files() -> list[Path]:
    """Regular files of the prose directory, symlinks resolved and deduplicated, sorted."""
    root = Path(os.environ.get("QUANTFID_PROSE_DIR", PROSE_DIR))
    if not root.is_dir():
        raise CorpusError(
            f"fidelity.corpus='prose': {root} does not exist. It ships with Debian's base-files package; on another "
            "system set QUANTFID_PROSE_DIR to a directory of English plain-text files."
        )
    files = sorted({p.resolve() for p in root.iterdir() if p.resolve().is_file()})
    if not files:
        raise CorpusError(f"fidelity.corpus='prose': {root} holds no files; set QUANTFID_PROSE_DIR")
    return files


def documents(name: str) -> Iterator[str]:
    """A built-in corpus as documents, lazily (each file of ``code`` and ``prose``, each task instance of ``tasks``),
    so a token budget reads only what it needs."""
    if name == "code":
        return (p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files("heldout"))
    if name == "prose":
        return (p.read_text(encoding="utf-8", errors="replace") for p in prose_files())
    if name == "tasks":
        instances = tasks.calibration_instances()
        random.Random(0).shuffle(instances)
        return (inst.prompt + inst.answer for inst in instances)
    raise CorpusError(f"fidelity.corpus={name!r} is not known; choose one of {list(BUILTIN_CORPORA)}")
