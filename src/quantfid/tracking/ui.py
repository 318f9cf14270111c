"""Links into the MLflow UI (3.17's hash routes): a sweep's runs table and the compare view of its runs.

``/#/experiments/<id>/runs?searchFilter=...`` is the runs table with a search filter in its URL state (MLflow keeps
``searchFilter``, ``orderByKey``, ... in the query of the hash route); ``/#/compare-runs?runs=[...]&experiments=[...]``
is the compare view (scatter plot, parallel coordinates) of those runs. For a local sqlite store the UI is the one
``mlflow ui --backend-store-uri <store>`` serves on :data:`LOCAL_UI`.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlparse

from quantfid.api.schema import TAG_SWEEP

LOCAL_UI = "http://127.0.0.1:5000"
#: MLflow 3.17 picks an experiment's default page from a browser-wide "workflow type" (the sidebar's GenAI / Machine
#: learning switch, kept in localStorage, GenAI in a fresh browser), not from the ``mlflow.experimentKind`` tag: a fresh
#: browser opens any experiment on the GenAI overview. The ``workflowType`` query parameter overrides it for the page,
#: so every link quantfid prints carries it.
WORKFLOW = "workflowType=machine_learning"
#: The runs table's order in the links (not the start time: see runs_url).
ORDER_BY = "metrics.`fid.kld_mean`"
#: The most run ids a link lists (a longer URL is refused by some servers and proxies).
MAX_RUN_IDS = 100


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself, or the local ``mlflow ui`` for a file/database store."""
    return tracking_uri.rstrip("/") if urlparse(tracking_uri).scheme in ("http", "https") else LOCAL_UI


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's page in the machine-learning workflow: MLflow opens it on the runs table."""
    return f"{base}/#/experiments/{experiment_id}?{WORKFLOW}"


def runs_url(base: str, experiment_id: str, sweep_id: str | None = None, run_ids: list[str] | None = None) -> str:
    """The experiment's runs table, filtered to the given runs (when the sweep reused runs of earlier sweeps) or to
    the runs the sweep created (``quantfid.sweep_id``)."""
    if run_ids and len(run_ids) <= MAX_RUN_IDS:
        flt = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    elif sweep_id:
        flt = f"tags.`{TAG_SWEEP}` = '{sweep_id}'"
    else:
        return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}"
    # ordered by a key other than the start time, the table lists the matching runs flat (MLflow nests child runs
    # under their collapsed parent only in its default order): one row per job, the reference (KLD 0) first
    order = f"orderByKey={quote(ORDER_BY)}&orderByAsc=true"
    return f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}&{order}&searchFilter={quote(flt)}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare view of ``run_ids`` (at most :data:`MAX_RUN_IDS`)."""
    runs = quote(json.dumps(run_ids[:MAX_RUN_IDS], separators=(",", ":")))
    return f"{base}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([experiment_id]))}&{WORKFLOW}"
