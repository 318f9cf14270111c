"""Hydra callback: check the store and open the sweep's parent run before any job; close and summarise after.

Registered in conf/config.yaml under ``hydra.callbacks``. ``on_multirun_start`` runs once in the launching process
before the launcher starts a single job, which is what makes "fail fast, before any model work" true for every
launcher.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantfid.api import schema as S
from quantfid.sweep.context import SweepContext, new_sweep_id
from quantfid.tracking import runs as R
from quantfid.tracking.store import StoreError, check_store, resolve_store, setup_experiment

log = logging.getLogger("quantfid.sweep")


def _store_from(cfg: DictConfig):
    tracking = cfg.get("tracking") or {}
    return resolve_store(
        tracking.get("uri"),
        cfg.get("run_dir", "runs"),
        tracking.get("experiment", "quantfid"),
        tracking.get("artifact_location"),
    )


def begin_sweep(cfg: DictConfig, multirun: bool, out_dir: str | None = None) -> SweepContext:
    """Check the store, create the experiment and the parent ``sweep`` run, export the context to the jobs."""
    store = _store_from(cfg)
    try:
        check_store(store)
        experiment_id = setup_experiment(store)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    import mlflow

    client = mlflow.MlflowClient(store.uri)
    sweep_id = new_sweep_id()
    choices = {}
    hydra_node = cfg.get("hydra")
    if hydra_node is not None:
        choices = OmegaConf.to_container(hydra_node.runtime.choices) or {}
    preset = str(choices.get("experiment") or "none")
    tags = {S.TAG_EXPERIMENT: preset, "quantfid.multirun": str(multirun).lower()}
    run_id = R.create_sweep_run(client, experiment_id, sweep_id, f"sweep {preset} {sweep_id}", tags)
    jobs_log = ""
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        jobs_log = str(Path(out_dir) / "quantfid_jobs.jsonl")
    ctx = SweepContext(sweep_id, run_id, experiment_id, store.uri, jobs_log)
    ctx.export()
    if out_dir:
        (Path(out_dir) / "quantfid_sweep.json").write_text(json.dumps(ctx.__dict__, indent=1))
    log.info("sweep %s -> %s (experiment %s, parent run %s)", sweep_id, store.uri, store.experiment, run_id)
    return ctx


def summarize(ctx: SweepContext) -> dict[str, int]:
    """Counts of job outcomes this invocation saw (FINISHED / SKIPPED / FAILED), from the jobs log."""
    counts = {"FINISHED": 0, "SKIPPED": 0, "FAILED": 0}
    if ctx.jobs_log and Path(ctx.jobs_log).exists():
        for line in Path(ctx.jobs_log).read_text().splitlines():
            status = json.loads(line).get("status")
            counts[status] = counts.get(status, 0) + 1
    return counts


def end_sweep(ctx: SweepContext) -> dict[str, int]:
    """Close the parent run FINISHED (the sweep ran to its end; failed jobs are counted in its tags)."""
    import mlflow

    client = mlflow.MlflowClient(ctx.tracking_uri)
    counts = summarize(ctx)
    for status, n in counts.items():
        client.set_tag(ctx.sweep_run_id, f"{S.TAG_JOBS_PREFIX}{status.lower()}", str(n))
    client.set_terminated(ctx.sweep_run_id, "FINISHED")
    msg = (
        f"sweep {ctx.sweep_id}: {counts['FINISHED']} finished, {counts['SKIPPED']} skipped (already FINISHED), "
        f"{counts['FAILED']} failed. Store: {ctx.tracking_uri}\n"
        f"  compare in the MLflow UI: mlflow ui --backend-store-uri {ctx.tracking_uri}  (then open the experiment)"
    )
    print(msg, file=sys.stderr if counts["FAILED"] else sys.stdout)
    return counts


class SweepTracking(Callback):
    """One parent ``sweep`` run per invocation (multirun or single run), opened before any job starts."""

    def __init__(self) -> None:
        self.ctx: SweepContext | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.ctx = begin_sweep(config, multirun=True, out_dir=str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.ctx is not None:
            end_sweep(self.ctx)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.ctx = begin_sweep(config, multirun=False, out_dir=str(config.hydra.run.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.ctx is not None:
            end_sweep(self.ctx)
