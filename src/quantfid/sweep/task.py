"""One job of a sweep: identity -> skip or (load reference -> quantize -> measure fidelity -> bench -> track).

The wrapper is what lets a multirun survive a bad quant: an exception inside a job ends its MLflow run FAILED with the
error as a tag and the traceback as ``error.txt``, and the job returns normally so the launcher goes on to the next.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from quantfid.api import schema as S
from quantfid.models.loading import tokenizer_fingerprint
from quantfid.sweep import stages
from quantfid.sweep.callbacks import begin_sweep, end_sweep, read_jobs
from quantfid.sweep.context import SweepContext
from quantfid.tracking import claims
from quantfid.tracking import runs as R
from quantfid.tracking.identity import run_identity, to_container

log = logging.getLogger("quantfid.sweep")


def _choice(group: str, job: dict[str, Any]) -> str:
    """The config-group option the job picked (``quant=bnb_nf4`` -> ``bnb_nf4``), else a name inside the config."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return str(choice)
    node = job.get(group) or {}
    return str(node.get("name") or node.get("backend") or "unknown") if isinstance(node, dict) else "unknown"


def run_name_for(quant_name: str, fidelity: dict[str, Any] | None) -> str:
    """``rtn_w4g64@code.256``: the quant and the fidelity setting, readable in the MLflow runs table."""
    fidelity = fidelity or {}
    return S.run_name(quant_name, fidelity.get("corpus"), fidelity.get("context"))


def _append_job_log(path: str, record: dict[str, Any]) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(ctx: SweepContext, record: dict[str, Any]) -> str:
    """``job 12/164 done (rtn_w4_g32@code.256 FINISHED in 3.1 s); 11 finished, 0 skipped, 1 failed; elapsed 1m02s,
    about 4m10s left``: the sweep's progress, from the jobs log every worker appends to."""
    records = read_jobs(ctx)
    done = len(records)
    counts = {k: sum(r.get("status") == k for r in records) for k in ("FINISHED", "SKIPPED", "FAILED")}
    elapsed = time.time() - ctx.started if ctx.started else 0.0
    total = max(ctx.total, done)
    left = ""
    worked = done - counts["SKIPPED"]
    if total > done and worked > 0 and elapsed > 0:
        left = f", about {_duration(elapsed / done * (total - done))} left"
    what = f"{record.get('name')} {record.get('status')}"
    if record.get("seconds") is not None:
        what += f" in {record['seconds']:.1f} s"
    return (
        f"job {done}/{total} done ({what}); {counts['FINISHED']} finished, {counts['SKIPPED']} skipped, "
        f"{counts['FAILED']} failed; elapsed {_duration(elapsed)}{left}"
    )


def _done(ctx: SweepContext, record: dict[str, Any]) -> dict[str, Any]:
    """Record the job's outcome in the jobs log and print the sweep's progress line."""
    _append_job_log(ctx.jobs_log, record)
    if ctx.jobs_log:
        log.info(progress_line(ctx, record))
    return record


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job under the sweep's tracking context; never raises for a failure inside the pipeline."""
    ctx = SweepContext.from_env()
    standalone = ctx is None
    if ctx is None:  # started without the sweep callback (e.g. hydra.callbacks cleared): be our own sweep
        ctx = begin_sweep(cfg, multirun=False)
    try:
        return _run_tracked(cfg, ctx)
    finally:
        if standalone:
            end_sweep(ctx)


def _claim(client, ctx: SweepContext, identity: str, name: str, tags: dict[str, str]) -> tuple[Any, str | None]:
    """Start the job's run as its claim on ``identity``; returns (the active run, None) when this job may run it, or
    (None, the holder's run id) when another sweep holds or finished it (our claim is deleted)."""
    import mlflow

    for attempt in range(4):
        run = mlflow.start_run(
            experiment_id=ctx.experiment_id, run_name=name, parent_run_id=ctx.sweep_run_id,
            tags={**tags, **claims.owner_tags()},
        )  # fmt: skip
        result = claims.settle_claim(client, ctx.experiment_id, identity, run.info.run_id, ctx.claim_timeout_s)
        if result.won:
            return run, None
        mlflow.end_run("KILLED")
        client.delete_run(run.info.run_id)  # a lost claim is no run: it leaves the runs table
        if not result.tie or attempt == 3:
            return None, result.holder
        claims.backoff()
        if R.find_finished(client, ctx.experiment_id, identity):
            return None, R.find_finished(client, ctx.experiment_id, identity)
    return None, None


def _run_tracked(cfg: DictConfig, ctx) -> dict[str, Any]:
    import mlflow

    job = to_container(cfg)
    identity = run_identity(cfg)
    quant_name = _choice("quant", job)
    fidelity = job.get("fidelity") if isinstance(job.get("fidelity"), dict) else None
    name = run_name_for(quant_name, fidelity)
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(job["run_dir"])
    cache_dir = Path(job["run_dir"]) / "cache"
    record = {"name": name, "identity": identity, "output_dir": str(out_dir)}

    mlflow.set_tracking_uri(ctx.tracking_uri)
    client = mlflow.MlflowClient(ctx.tracking_uri)
    done = R.find_finished(client, ctx.experiment_id, identity)
    if done:
        log.info("skip %s: identity %s already FINISHED as run %s", name, identity, done)
        return _done(ctx, {**record, "status": "SKIPPED", "run_id": done})

    is_reference = stages.is_reference_config(job.get("quant") or {}, quant_name)
    tags = {
        S.TAG_SCHEMA: S.SCHEMA_VERSION,
        S.TAG_ROLE: S.ROLE_REFERENCE if is_reference else S.ROLE_QUANT,
        S.TAG_SWEEP: ctx.sweep_id,
        S.TAG_IDENTITY: identity,
        S.TAG_QUANT_NAME: S.REFERENCE_NAME if is_reference else quant_name,
        S.TAG_EXPERIMENT: _choice("experiment", job),
    }
    run, holder = _claim(client, ctx, identity, name, tags)
    if run is None:
        log.info("skip %s: identity %s is claimed or FINISHED by run %s (another sweep)", name, identity, holder)
        return _done(ctx, {**record, "status": "SKIPPED", "run_id": holder, "claimed_by": holder})
    record["run_id"] = run.info.run_id
    heartbeat = claims.Heartbeat(ctx.tracking_uri, [run.info.run_id], ctx.claim_timeout_s / 4).start()
    share = stages.share_client(job, ctx.tracking_uri)
    t0 = time.perf_counter()
    try:
        params_job = dict(job)
        try:  # schema check before any model work; the resolved quant config is what the params show
            params_job["quant"] = stages.validate_quant_stage(job["quant"], quant_name)
        finally:
            mlflow.log_params(R.params_for(params_job))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), S.CONFIG_ARTIFACT)

        ref = stages.load_reference_stage(stages.model_spec(job["model"]))
        mlflow.set_tags({S.TAG_REFERENCE: ref.fingerprint, S.TAG_TOKENIZER: tokenizer_fingerprint(ref.tokenizer)})

        quant = stages.quantize_stage(ref, job["quant"], quant_name)
        mlflow.set_tag(S.TAG_QUANT_FP, quant.fingerprint)
        mlflow.log_metrics(
            {S.METRIC_BITS_PER_WEIGHT: quant.bits_per_weight, S.METRIC_MODEL_BYTES: float(quant.model_bytes)}
        )
        perf = stages.perf_stage(quant, job.get("perf") or {})
        if perf is not None:
            mlflow.log_metrics(perf.metrics())
            mlflow.set_tags({S.TAG_PERF_MEMORY: perf.memory_method, S.TAG_PERF_WORKLOAD: perf.workload})

        inputs = []
        if fidelity is not None:
            result = stages.measure_fidelity_stage(ref, quant, fidelity, cache_dir, client=share)
            mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
            inputs.append(stages.corpus_input(result, cache_dir))

        bench = job.get("bench") or {}
        outcomes = stages.bench_stage(ref, quant, bench, cache_dir, client=share)
        outcomes = S.conform_outcomes(stages.per_prompt_kld_stage(ref, quant, outcomes, bench, cache_dir, share))
        mlflow.log_metrics(S.bench_metrics(outcomes))
        artifact = Path(S.OUTCOMES_ARTIFACT)
        out_dir.mkdir(parents=True, exist_ok=True)
        outcomes.to_parquet(out_dir / artifact.name, index=False)
        mlflow.log_artifact(str(out_dir / artifact.name), str(artifact.parent))
        stages.log_outcome_table(outcomes)
        inputs.extend(stages.task_inputs(outcomes))
        stages.log_inputs(client, run.info.run_id, inputs)
        mlflow.log_metric(S.METRIC_JOB_SECONDS, time.perf_counter() - t0)
    except (KeyboardInterrupt, SystemExit) as err:  # SIGINT; SystemExit: the launcher or a worker is shutting down
        mlflow.end_run("KILLED")
        _append_job_log(ctx.jobs_log, {**record, "status": "KILLED", "error": type(err).__name__})
        raise
    except Exception as err:  # the wrapper's whole point: record, report, let the sweep go on
        log.error("job %s FAILED: %s: %s", name, type(err).__name__, err)
        R.record_failure(err)
        mlflow.end_run("FAILED")
        seconds = time.perf_counter() - t0
        return _done(ctx, {**record, "status": "FAILED", "error": f"{type(err).__name__}: {err}", "seconds": seconds})
    except BaseException:  # SIGTERM (quantfid.sweep.app.Terminated) and the like: the run was killed, not failed
        mlflow.end_run("KILLED")
        raise
    finally:
        heartbeat.stop()
    mlflow.end_run("FINISHED")
    seconds = time.perf_counter() - t0
    log.info("finished %s in %.1f s (run %s)", name, seconds, record["run_id"])
    return _done(ctx, {**record, "status": "FINISHED", "seconds": seconds})
