"""Where things are: the Hydra configs shipped inside the package, the organism's files, the caches.

The configs live in the repository's top-level ``conf/`` and are shipped as ``quantfid/conf`` (a symlink in the
source tree, real files in a wheel), so an editable checkout and a plain ``pip install .`` find them the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ENV_CONF_DIR = "QUANTFID_CONF_DIR"
ENV_TASK_PATH = "QUANTFID_TASK_PATH"
ENV_CACHE = "QUANTFID_CACHE"


def conf_dir() -> Path:
    """The Hydra config directory: ``$QUANTFID_CONF_DIR`` if set, else the configs shipped with the package."""
    env = os.environ.get(ENV_CONF_DIR)
    return Path(env).resolve() if env else (PACKAGE_DIR / "conf").resolve()


def task_dirs() -> list[Path]:
    """Where task files are looked up, in order: ``$QUANTFID_TASK_PATH`` entries, then ``<conf>/task``."""
    extra = [Path(p) for p in os.environ.get(ENV_TASK_PATH, "").split(os.pathsep) if p]
    return [*extra, conf_dir() / "task"]


def cache_dir() -> Path:
    """Root of the on-disk caches (reference caches, outcome tables): ``$QUANTFID_CACHE`` or ``~/.cache/quantfid``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "quantfid"


def organism_dir() -> Path:
    """The shipped organism's checkpoint (weights, tokenizer, config), loaded like any local checkpoint."""
    return PACKAGE_DIR / "data" / "organism"
