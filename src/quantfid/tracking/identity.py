"""Run identity: a fingerprint of what determines a run's numbers, and nothing else.

Two jobs with the same identity measure the same thing, so a rerun may skip an identity already FINISHED in the store.
The semantic config is the composed job config minus keys that only say where or how a run executes (paths, the
tracking store, launcher, logging, progress bars) plus a fingerprint of the model files themselves, so that retraining
the organism (same name, new weights) makes new identities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quantfid.models.loading import resolve_name

#: Top-level keys that never change a result. ``hydra`` holds the launcher, sweeper, run dirs and logging; ``sweep``
#: how failures and claims are handled; ``perf`` the speed workload (its numbers depend on the machine, not the run).
NON_SEMANTIC_KEYS = frozenset(
    {"hydra", "tracking", "run_dir", "paths", "launcher", "logging", "progress", "cache", "sweep", "perf"}
)
#: Model files hashed in full up to this size; bigger ones are identified by size plus head and tail bytes.
FULL_HASH_LIMIT = 256 << 20
_EDGE = 8 << 20


def to_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    return dict(cfg)


def semantic_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a job config that determines its numbers."""
    return {k: v for k, v in to_container(cfg).items() if k not in NON_SEMANTIC_KEYS}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_LIMIT:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def model_source_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """Hash of a local checkpoint's files (weights, config, tokenizer); for a hub id, the id and revision.

    Cheap enough to compute before loading anything, which is what resume needs: skip before paying for the model.
    """
    resolved = Path(resolve_name(name_or_path))
    if not resolved.is_dir():
        return fingerprint({"hub_id": name_or_path, "revision": revision})
    files = sorted(p for p in resolved.iterdir() if p.is_file() and not p.name.startswith("."))
    return fingerprint({p.name: _file_digest(p) for p in files})


def run_identity(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Fingerprint of the semantic config plus the model's source fingerprint (the ``quantfid.run_identity`` tag)."""
    sem = semantic_config(cfg)
    model = sem.get("model") or {}
    source = model_source_fingerprint(str(model.get("name_or_path")), model.get("revision")) if model else None
    return fingerprint({"config": sem, "model_source": source}, n=32)
