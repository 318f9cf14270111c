"""MLflow runs in the shape docs/schema.md promises: roles, tags, flattened params, stable metric names, artifacts."""

from __future__ import annotations

import json
import math
import re
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = "1"
TAG_SCHEMA = "quantfid.schema_version"
TAG_ROLE = "quantfid.role"
TAG_SWEEP = "quantfid.sweep_id"
TAG_IDENTITY = "quantfid.run_identity"
TAG_REFERENCE = "quantfid.reference_fingerprint"
TAG_TOKENIZER = "quantfid.tokenizer_fingerprint"
TAG_QUANT_FP = "quantfid.quant_fingerprint"
TAG_QUANT_NAME = "quantfid.quant_name"
TAG_EXPERIMENT = "quantfid.experiment"
TAG_ERROR = "quantfid.error"
ROLE_SWEEP, ROLE_REFERENCE, ROLE_QUANT = "sweep", "reference", "quant"
#: Columns of ``outcomes/outcomes.parquet`` (docs/schema.md).
OUTCOME_COLUMNS = ("task", "prompt_id", "prompt_hash", "output", "passed", "score", "kld_prompt", "kld_completion")
MAX_PARAM_LEN = 6000


_PARAM_KEY = re.compile(r"^[A-Za-z0-9_\-. :/]+$")  # what MLflow accepts in a param name


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"quant": {"bits": 4}}`` -> ``{"quant.bits": 4}``; lists become JSON so a param stays one comparable value.

    A mapping whose keys MLflow would refuse as names (module globs such as ``*.self_attn.v_proj`` in RTN overrides)
    stays one param holding its JSON.
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and not all(_PARAM_KEY.match(str(k)) for k in value):
            out[name] = json.dumps(dict(value), default=str, sort_keys=True)
        elif isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def params_for(job_cfg: Mapping[str, Any], groups: tuple[str, ...] = ("model", "quant", "fidelity", "bench")) -> dict:
    """The schema's flattened params: every key of the resolved model, quant, fidelity and bench configs."""
    params: dict[str, Any] = {}
    for group in groups:
        if isinstance(job_cfg.get(group), Mapping):
            params.update(flatten(job_cfg[group], group))
    return {k: ("null" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in params.items()}


def task_key(task: str) -> str:
    """``organism/arith`` -> ``organism.arith`` (metric names keep ``.`` as the only separator)."""
    return task.replace("/", ".")


def bench_metrics(outcomes: pd.DataFrame) -> dict[str, float]:
    """``bench.<task>.acc`` / ``bench.<task>.n`` per task and ``bench.composite.acc`` (mean over all prompts)."""
    metrics: dict[str, float] = {}
    for task, grp in outcomes.groupby("task", sort=True):
        metrics[f"bench.{task_key(str(task))}.acc"] = float(grp["passed"].mean())
        metrics[f"bench.{task_key(str(task))}.n"] = float(len(grp))
    if len(outcomes):
        metrics["bench.composite.acc"] = float(outcomes["passed"].mean())
        metrics["bench.composite.n"] = float(len(outcomes))
    return metrics


def conform_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The schema's column set and dtypes; a stage that does not measure a column leaves it NaN, never invents it."""
    df = outcomes.copy()
    if "score" not in df:
        df["score"] = df["passed"].astype(float)
    for col in ("kld_prompt", "kld_completion"):
        if col not in df:
            df[col] = math.nan
    missing = [c for c in OUTCOME_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"outcome table lacks columns {missing}; the bench stage must provide {list(OUTCOME_COLUMNS)}")
    df = df[list(OUTCOME_COLUMNS) + [c for c in df.columns if c not in OUTCOME_COLUMNS]]
    df["passed"] = df["passed"].astype(bool)
    df["score"] = df["score"].astype(float)
    return df.reset_index(drop=True)


def find_finished(client, experiment_id: str, identity: str) -> str | None:
    """Id of a FINISHED run with this identity, if any: the rerun skips it (RUNNING/FAILED/KILLED do not count)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_IDENTITY}` = '{identity}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def create_sweep_run(client, experiment_id: str, sweep_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """The parent run of a sweep (left RUNNING until the sweep ends); carries the provenance tags too."""
    from mlflow.tracking.context.registry import resolve_tags

    all_tags = resolve_tags(
        {TAG_SCHEMA: SCHEMA_VERSION, TAG_ROLE: ROLE_SWEEP, TAG_SWEEP: sweep_id, "mlflow.runName": run_name, **tags}
    )
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    return run.info.run_id


def log_table(df: pd.DataFrame, artifact_file: str) -> None:
    """Log ``df`` as parquet at ``artifact_file`` of the active run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(artifact_file).parent))


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def record_failure(err: BaseException) -> None:
    """Tag the active run with the error and keep the traceback as ``error.txt``; the caller ends it FAILED."""
    import mlflow

    message = f"{type(err).__name__}: {err}"
    mlflow.set_tag(TAG_ERROR, message[:5000])
    try:
        mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
    except Exception as log_err:  # the tag already says what failed; an unwritable artifact store must not hide it
        mlflow.set_tag("quantfid.error_artifact", f"error.txt not logged: {log_err}"[:5000])
