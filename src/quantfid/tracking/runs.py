"""MLflow runs in the shape of the tracking schema (quantfid.api.schema, docs/schema.md): flattened params, the
resume lookup, the sweep's parent run, failure records."""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping
from typing import Any

from quantfid.api.schema import (
    ERROR_ARTIFACT,
    PARAM_GROUPS,
    ROLE_SWEEP,
    SCHEMA_VERSION,
    TAG_ERROR,
    TAG_IDENTITY,
    TAG_ROLE,
    TAG_SCHEMA,
    TAG_SWEEP,
)

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


def params_for(job_cfg: Mapping[str, Any], groups: tuple[str, ...] = PARAM_GROUPS) -> dict:
    """The schema's flattened params: every key of the resolved model, quant, fidelity and bench configs."""
    params: dict[str, Any] = {}
    for group in groups:
        if isinstance(job_cfg.get(group), Mapping):
            params.update(flatten(job_cfg[group], group))
    return {k: ("null" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in params.items()}


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


def record_failure(err: BaseException) -> None:
    """Tag the active run with the error and keep the traceback as ``error.txt``; the caller ends it FAILED."""
    import mlflow

    message = f"{type(err).__name__}: {err}"
    mlflow.set_tag(TAG_ERROR, message[:5000])
    try:
        mlflow.log_text("".join(traceback.format_exception(err)), ERROR_ARTIFACT)
    except Exception as log_err:  # the tag already says what failed; an unwritable artifact store must not hide it
        mlflow.set_tag("quantfid.error_artifact", f"error.txt not logged: {log_err}"[:5000])
