"""Fixtures: a REAL small MLflow store (sqlite + explicit artifact location) holding a synthetic schema-v1 cohort."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from quantfid.analysis.synthetic import SyntheticCohort, make_synthetic_cohort, write_to_mlflow


@dataclass
class Store:
    uri: str
    root: Path
    experiment: str
    sweep_id: str
    synthetic: SyntheticCohort


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    """16 quants (2 reproduce the reference exactly) x 2 fidelity settings x 3 tasks x 100 prompts."""
    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root}/mlflow.db"
    syn = make_synthetic_cohort(
        n_quants=16,
        tasks=("organism/arith", "organism/lookup", "organism/sort"),
        n_prompts=100,
        settings=(("code", 256), ("prose", 64)),
        max_damage=0.5,
        seed=3,
    )
    write_to_mlflow(syn, uri, "cohort", artifact_location=str(root / "artifacts"), sweep_id="sweep-a", progress=False)
    return Store(uri, root, "cohort", "sweep-a", syn)
