"""The sweep a job belongs to: id, parent run, experiment and store, handed from the Hydra callback to every job.

The callback runs in the process that launches the jobs; jobs may run there (basic launcher) or in workers (joblib,
submitit, Ray) that inherit its environment, so the context travels as one environment variable.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

ENV_SWEEP = "QUANTFID_SWEEP"


@dataclass(frozen=True)
class SweepContext:
    sweep_id: str
    sweep_run_id: str
    experiment_id: str
    tracking_uri: str
    jobs_log: str
    total: int = 0  # jobs in the sweep (from the preflight): the progress line's denominator
    started: float = 0.0  # unix time the sweep started (ETA)
    allow_failures: bool = False
    claim_timeout_s: float = 600.0

    def export(self) -> None:
        os.environ[ENV_SWEEP] = json.dumps(asdict(self))

    @staticmethod
    def from_env() -> SweepContext | None:
        raw = os.environ.get(ENV_SWEEP)
        return SweepContext(**json.loads(raw)) if raw else None


def new_sweep_id() -> str:
    """Readable and unique: UTC time of the start plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
