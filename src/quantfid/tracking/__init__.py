"""Track stage: MLflow store set-up and checks, run identity, the tracking schema (docs/schema.md), resume/skip."""

from quantfid.tracking.identity import model_source_fingerprint, run_identity, semantic_config
from quantfid.tracking.runs import SCHEMA_VERSION, bench_metrics, find_finished, flatten, params_for
from quantfid.tracking.store import Store, StoreError, check_store, default_uri, resolve_store, setup_experiment

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "bench_metrics",
    "check_store",
    "default_uri",
    "find_finished",
    "flatten",
    "model_source_fingerprint",
    "params_for",
    "resolve_store",
    "run_identity",
    "semantic_config",
    "setup_experiment",
]
