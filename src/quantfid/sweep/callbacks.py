"""Hydra callback: check every job and the reference, then open the sweep's parent run; close and summarise after.

Registered in conf/config.yaml under ``hydra.callbacks``. ``on_multirun_start`` runs once in the launching process
before the launcher starts a single job, which is what makes "fail fast, before any run is written" true for every
launcher: the preflight (quantfid.sweep.preflight) composes and checks every job and loads the reference once; only
then is the store touched (experiment, parent run).

Exit status (docs/tracking.md): 0 when every job FINISHED or was skipped; 1 when any job FAILED (the other jobs still
run; ``sweep.allow_failures=true`` makes it 0); 2 for bad input found before the first run; 130 / 143 on SIGINT /
SIGTERM. The parent run ends FINISHED, FAILED (a failed job, an error of the launcher) or KILLED (a signal), never
RUNNING; one left RUNNING by SIGKILL is ended KILLED by the next sweep on the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quantfid.api import schema as S
from quantfid.sweep.context import SweepContext, new_sweep_id
from quantfid.sweep.preflight import PreflightError, preflight
from quantfid.tracking import claims
from quantfid.tracking import runs as R
from quantfid.tracking.store import StoreError, check_store, resolve_store, setup_experiment
from quantfid.tracking.ui import compare_url, runs_url, ui_base

log = logging.getLogger("quantfid.sweep")

#: The sweep this process opened and has not closed yet (the CLI closes it FAILED / KILLED when the sweep breaks).
_OPEN: dict[str, Any] = {}
#: The metrics the compare URL plots: fidelity against score.
COMPARE_AXES = ("fid.kld_mean", "bench.composite.acc")


def _store_from(cfg: DictConfig):
    tracking = cfg.get("tracking") or {}
    return resolve_store(
        tracking.get("uri"),
        cfg.get("run_dir", "runs"),
        tracking.get("experiment", "quantfid"),
        tracking.get("artifact_location"),
    )


def sweep_settings(cfg: DictConfig) -> dict[str, Any]:
    """``sweep.*``: allow_failures, claim_timeout_s (with their defaults when the key is absent)."""
    node = cfg.get("sweep") or {}
    return {
        "allow_failures": bool(node.get("allow_failures", False)),
        "claim_timeout_s": float(node.get("claim_timeout_s", claims.DEFAULT_CLAIM_TIMEOUT_S)),
    }


def sweep_key(cfg: DictConfig, store_uri: str) -> str:
    """What a rerun of the same command shares: preset, the command-line overrides, the store."""
    try:
        overrides = sorted(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))
    except Exception:
        overrides = []
    return hashlib.sha256(json.dumps([store_uri, overrides]).encode()).hexdigest()[:16]


def begin_sweep(cfg: DictConfig, multirun: bool, out_dir: str | None = None) -> SweepContext:
    """Preflight every job, check the store, end dead runs, create the parent ``sweep`` run, export the context."""
    store = _store_from(cfg)

    def store_usable() -> None:
        try:
            check_store(store)
        except StoreError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    try:
        jobs = preflight(cfg, multirun, between=store_usable)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        experiment_id = setup_experiment(store)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    import mlflow

    settings = sweep_settings(cfg)
    client = mlflow.MlflowClient(store.uri)
    client.set_experiment_tag(experiment_id, S.TAG_EXPERIMENT_KIND, S.EXPERIMENT_KIND)
    sweep_id = new_sweep_id()
    # runs left RUNNING by a process that died (SIGKILL, power loss): end them KILLED before resuming
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    claims.end_dead(client, running, settings["claim_timeout_s"], f"sweep {sweep_id} found it dead at start")
    choices = {}
    hydra_node = cfg.get("hydra")
    if hydra_node is not None:
        choices = OmegaConf.to_container(hydra_node.runtime.choices) or {}
    preset = str(choices.get("experiment") or "none")
    tags = {
        S.TAG_EXPERIMENT: preset,
        "quantfid.multirun": str(multirun).lower(),
        S.TAG_SWEEP_KEY: sweep_key(cfg, store.uri),
        **claims.owner_tags(),
    }
    run_id = R.create_sweep_run(client, experiment_id, sweep_id, f"sweep {preset} {sweep_id}", tags)
    jobs_log = ""
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        jobs_log = str(Path(out_dir) / "quantfid_jobs.jsonl")
    else:
        jobs_log = tempfile.mkstemp(prefix="quantfid-jobs-", suffix=".jsonl")[1]
    ctx = SweepContext(
        sweep_id,
        run_id,
        experiment_id,
        store.uri,
        jobs_log,
        total=len(jobs),
        started=time.time(),
        allow_failures=settings["allow_failures"],
        claim_timeout_s=settings["claim_timeout_s"],
    )
    ctx.export()
    heartbeat = claims.Heartbeat(store.uri, [run_id], settings["claim_timeout_s"] / 4).start()
    _OPEN.update(ctx=ctx, heartbeat=heartbeat)
    if out_dir:
        (Path(out_dir) / "quantfid_sweep.json").write_text(json.dumps(ctx.__dict__, indent=1))
    log.info(
        "sweep %s: %d job(s) -> %s (experiment %s, parent run %s)", sweep_id, len(jobs), store.uri, store.experiment,
        run_id,
    )  # fmt: skip
    log.info("this sweep's runs in the MLflow UI: %s", runs_url(ui_base(store.uri), experiment_id, sweep_id))
    return ctx


def read_jobs(ctx: SweepContext) -> list[dict[str, Any]]:
    if not ctx.jobs_log or not Path(ctx.jobs_log).exists():
        return []
    return [json.loads(line) for line in Path(ctx.jobs_log).read_text().splitlines() if line.strip()]


def summarize(ctx: SweepContext) -> dict[str, int]:
    """Counts of job outcomes this invocation saw (FINISHED / SKIPPED / FAILED), from the jobs log."""
    counts = {"FINISHED": 0, "SKIPPED": 0, "FAILED": 0}
    for record in read_jobs(ctx):
        status = record.get("status")
        counts[status] = counts.get(status, 0) + 1
    return counts


def cohort_table(client: Any, run_ids: list[str]):
    """One row per run: name, status, quant name, role, fidelity setting, then every metric (the sweep's cohort)."""
    import pandas as pd

    rows = []
    for i in range(0, len(run_ids), 100):
        ids = ", ".join(f"'{r}'" for r in run_ids[i : i + 100])
        for run in client.search_runs(
            [client.get_run(run_ids[i]).info.experiment_id], f"attributes.run_id IN ({ids})", max_results=1000
        ):
            t, p = run.data.tags, run.data.params
            rows.append(
                {
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "quant_name": t.get(S.TAG_QUANT_NAME),
                    "role": t.get(S.TAG_ROLE),
                    "corpus": p.get(S.PARAM_CORPUS),
                    "context": p.get(S.PARAM_CONTEXT),
                    "backend": p.get("quant.backend"),
                    "error": t.get(S.TAG_ERROR, ""),
                    **dict(sorted(run.data.metrics.items())),
                }
            )
    return pd.DataFrame(rows)


def _log_cohort(client: Any, ctx: SweepContext, records: list[dict[str, Any]]) -> None:
    run_ids = list(dict.fromkeys(r["run_id"] for r in records if r.get("run_id")))
    if not run_ids:
        return
    table = cohort_table(client, run_ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(S.COHORT_ARTIFACT).name
        table.to_csv(path, index=False)
        client.log_artifact(ctx.sweep_run_id, str(path), str(Path(S.COHORT_ARTIFACT).parent))


def end_sweep(ctx: SweepContext) -> int:
    """Close the parent run, log the cohort table, print the summary, the failed jobs and the UI links; returns the
    exit status (0, or 1 when a job FAILED and failures are not allowed)."""
    import mlflow

    _stop_heartbeat()
    client = mlflow.MlflowClient(ctx.tracking_uri)
    records = read_jobs(ctx)
    counts = summarize(ctx)
    failed = [r for r in records if r.get("status") == "FAILED"]
    code = 1 if failed and not ctx.allow_failures else 0
    for status, n in counts.items():
        client.set_tag(ctx.sweep_run_id, f"{S.TAG_JOBS_PREFIX}{status.lower()}", str(n))
    try:
        _log_cohort(client, ctx, records)
    except Exception as err:  # the summary must still be printed and the run closed
        log.warning("cohort table not logged on the sweep run: %s", err)
    client.set_terminated(ctx.sweep_run_id, "FAILED" if code else "FINISHED")
    _OPEN.clear()
    lines = [
        f"sweep {ctx.sweep_id}: {counts['FINISHED']} finished, {counts['SKIPPED']} skipped (already FINISHED or "
        f"claimed), {counts['FAILED']} failed. Store: {ctx.tracking_uri}"
    ]
    for r in failed:
        lines.append(f"  FAILED {r.get('name')}: {r.get('error')}  (run {r.get('run_id')}, log {r.get('output_dir')})")
    if failed:
        lines.append(
            "  exit status 1: a job failed (sweep.allow_failures=true exits 0)"
            if code
            else "  failures allowed (sweep.allow_failures=true): exit status 0"
        )
    urls = sweep_urls(ctx, records)
    if not ctx.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  MLflow UI: mlflow ui --backend-store-uri {ctx.tracking_uri}   then open:")
    lines.append(f"  this sweep's runs: {urls['runs']}")
    if urls.get("compare"):
        lines.append(f"  compare them ({COMPARE_AXES[0]} vs {COMPARE_AXES[1]}: Scatter Plot tab): {urls['compare']}")
    if ctx.jobs_log:
        summary = Path(ctx.jobs_log).with_name("quantfid_sweep.json")
        if summary.exists():
            summary.write_text(json.dumps({**json.loads(summary.read_text()), "urls": urls, "exit": code}, indent=1))
    print("\n".join(lines), file=sys.stderr if failed else sys.stdout, flush=True)
    return code


def sweep_urls(ctx: SweepContext, records: list[dict[str, Any]]) -> dict[str, str]:
    """The runs table of the sweep's runs (those it ran and those it skipped as already FINISHED) and their compare
    view."""
    base = ui_base(ctx.tracking_uri)
    ok_ids = list(dict.fromkeys(r["run_id"] for r in records if r.get("status") in ("FINISHED", "SKIPPED")
                                and r.get("run_id")))  # fmt: skip
    skipped = any(r.get("status") == "SKIPPED" for r in records)
    urls = {"runs": runs_url(base, ctx.experiment_id, ctx.sweep_id, ok_ids if skipped else None)}
    if ok_ids:
        urls["compare"] = compare_url(base, ctx.experiment_id, ok_ids)
    return urls


def abort_sweep(status: str, why: str) -> None:
    """End the open parent run ``status`` (FAILED / KILLED) when the sweep broke before its end; idempotent."""
    ctx = _OPEN.get("ctx")
    if ctx is None:
        return
    _stop_heartbeat()
    _OPEN.clear()
    try:
        import mlflow

        client = mlflow.MlflowClient(ctx.tracking_uri)
        for k, n in summarize(ctx).items():
            client.set_tag(ctx.sweep_run_id, f"{S.TAG_JOBS_PREFIX}{k.lower()}", str(n))
        client.set_tag(ctx.sweep_run_id, S.TAG_ERROR, why[:5000])
        client.set_terminated(ctx.sweep_run_id, status)
        print(f"sweep {ctx.sweep_id}: {why}; its run {ctx.sweep_run_id} ended {status}", file=sys.stderr, flush=True)
    except Exception as err:  # the store itself may be what broke; the next sweep ends the run KILLED
        print(f"sweep {ctx.sweep_id}: {why}; could not end its run: {err}", file=sys.stderr, flush=True)


def _stop_heartbeat() -> None:
    beat = _OPEN.get("heartbeat")
    if beat is not None:
        beat.stop()


def _begin_or_exit(config: DictConfig, multirun: bool, out_dir: str) -> SweepContext:
    """Hydra turns an exception in a callback into a warning and runs the jobs anyway (without the sweep): any
    error opening the sweep stops the sweep here instead (exit 1; bad input already exited 2)."""
    try:
        return begin_sweep(config, multirun=multirun, out_dir=out_dir)
    except Exception as err:
        abort_sweep("FAILED", f"the sweep could not start: {type(err).__name__}: {err}")
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: the sweep could not start: {type(err).__name__}: {first}", file=sys.stderr)
        raise SystemExit(1) from None


def _end_or_exit(ctx: SweepContext | None) -> None:
    """End the sweep; its exit status (1: a job failed) or an error closing it (1, the parent ended FAILED) is the
    process's (Hydra would only warn about an exception raised here)."""
    if ctx is None:
        return
    try:
        code = end_sweep(ctx)
    except Exception as err:
        abort_sweep("FAILED", f"the sweep could not be closed: {type(err).__name__}: {err}")
        raise SystemExit(1) from None
    if code:
        raise SystemExit(code)


class SweepTracking(Callback):
    """One parent ``sweep`` run per invocation (multirun or single run), opened after every job was checked."""

    def __init__(self) -> None:
        self.ctx: SweepContext | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.ctx = _begin_or_exit(config, True, str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _end_or_exit(self.ctx)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.ctx = _begin_or_exit(config, False, str(config.hydra.run.dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        _end_or_exit(self.ctx)
