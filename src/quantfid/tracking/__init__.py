"""Track stage: MLflow store set-up and checks, run identity, run records in the tracking schema
(quantfid.api.schema), resume/skip.

Names are imported lazily: ``python -m quantfid.tracking.team`` must not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "model_source_fingerprint": "quantfid.tracking.identity",
    "run_identity": "quantfid.tracking.identity",
    "semantic_config": "quantfid.tracking.identity",
    "find_finished": "quantfid.tracking.runs",
    "flatten": "quantfid.tracking.runs",
    "params_for": "quantfid.tracking.runs",
    "Store": "quantfid.tracking.store",
    "StoreError": "quantfid.tracking.store",
    "check_store": "quantfid.tracking.store",
    "default_uri": "quantfid.tracking.store",
    "resolve_store": "quantfid.tracking.store",
    "setup_experiment": "quantfid.tracking.store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'quantfid.tracking' has no attribute {name!r}")
