"""Thin call sites of the pipeline stages, so a job reads as the pipeline: load -> quantize -> measure -> bench.

Each function hands its config to the stage package (quantfid.quant, quantfid.fidelity, quantfid.bench) and returns
what the tracking layer logs. Nothing here computes a metric.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from quantfid.api import schema as S
from quantfid.api.io import write_parquet_atomic
from quantfid.bench import cached_outcomes
from quantfid.bench.cache import outcome_cache_path
from quantfid.bench.calibration import calibration_instances, calibration_outcomes
from quantfid.bench.perf import PerfResult, PerfWorkload, measure_perf
from quantfid.bench.registry import load_task
from quantfid.fidelity import FidelityResult, FidelitySettings, check_corpus, measure_setting
from quantfid.fidelity.direction import CalibrationItem, behavioural_metrics, measure_direction
from quantfid.fidelity.measure import per_prompt_fidelity
from quantfid.models.loading import ModelSpec, Reference, load_reference
from quantfid.quant import (
    QuantConfigError,
    QuantizedModel,
    backend_schemas,
    quantize,
    reference_quant,
    validate_quant_config,
)
from quantfid.tracking.shared import fetch_file, publish_file

log = logging.getLogger(__name__)


def model_spec(model_cfg: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec(
        name_or_path=str(model_cfg["name_or_path"]),
        dtype=str(model_cfg.get("dtype", "float32")),
        device=str(model_cfg.get("device", "cpu")),
        revision=model_cfg.get("revision"),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
    )


@functools.lru_cache(maxsize=1)
def load_reference_stage(spec: ModelSpec) -> Reference:
    """The reference, loaded once per worker process (sequential jobs of a sweep share it)."""
    return load_reference(spec)


def quant_config(quant_cfg: Mapping[str, Any], quant_name: str) -> dict[str, Any]:
    """The job's quant config; one without a ``name`` takes the config-group option that selected it."""
    return {"name": quant_name, **dict(quant_cfg)}


_LAST_QUANT: dict[str, QuantizedModel] = {}


def quantize_stage(ref: Reference, quant_cfg: Mapping[str, Any], quant_name: str) -> QuantizedModel:
    """Quantize the loaded reference with the backend registry (``quantfid.quant.quantize``); the quant of the
    previous job is reused when it is the same (the sweep's inner loop over fidelity settings)."""
    cfg = quant_config(quant_cfg, quant_name)
    key = json.dumps({"ref": ref.fingerprint, "quant": cfg}, sort_keys=True, default=str)
    if key in _LAST_QUANT:
        return _LAST_QUANT[key]
    _LAST_QUANT.clear()  # one quantized model in memory at a time
    _LAST_QUANT[key] = quantize(ref.spec, cfg, reference=ref)
    return _LAST_QUANT[key]


def validate_quant_stage(quant_cfg: Mapping[str, Any], quant_name: str) -> dict[str, Any]:
    """Schema check of the quant config before any model is loaded; returns the resolved config."""
    return dict(validate_quant_config(quant_config(quant_cfg, quant_name)).resolved)


def quant_source_stage(quant_cfg: Mapping[str, Any], quant_name: str) -> str | None:
    """The hash of the files a quant is read from (an existing checkpoint; None for a quant made here): part of the
    run identity, so a checkpoint re-saved at the same path is measured again, not skipped as already FINISHED."""
    try:
        qc = validate_quant_config(quant_config(quant_cfg, quant_name))
    except QuantConfigError:
        return None  # the job fails on it, with the schema's message
    identity = backend_schemas()[qc.backend].identity
    return str(identity(qc.options)) if identity is not None else None


def is_reference_config(quant_cfg: Mapping[str, Any], quant_name: str) -> bool:
    """Does the job measure the reference itself? (An invalid config is no reference: the job fails on it.)"""
    try:
        return validate_quant_config(quant_config(quant_cfg, quant_name)).is_reference
    except QuantConfigError:
        return False


class BrokenQuantError(RuntimeError):
    """The fidelity stage found the quant broken (NaN/inf logits): the job is recorded FAILED with this message."""


def corpus_stage(fidelity_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The job's corpus, checked before its run starts (readable, right field, not empty): its label, its resolved
    spec (JSON) and its content hash, which go into the run's params and identity. Raises ``FidelityError``."""
    settings = FidelitySettings.from_config(dict(fidelity_cfg))
    spec = check_corpus(settings.corpus, max_tokens=settings.max_tokens)
    sha = spec.pop("sha256")
    key = {p: p.split(".", 1)[1] for p in (S.PARAM_CORPUS, S.PARAM_CORPUS_SOURCE, S.PARAM_CORPUS_SHA256)}
    return {
        key[S.PARAM_CORPUS]: spec["name"],
        key[S.PARAM_CORPUS_SOURCE]: json.dumps(spec, sort_keys=True),
        key[S.PARAM_CORPUS_SHA256]: sha,
    }


def share_client(job: Mapping[str, Any], tracking_uri: str) -> Any:
    """The MLflow client reference artifacts are shared through, or None. ``tracking.share_reference``: true, false
    or ``auto`` (default: on for a server or database store, where teammates are; off for a local sqlite file)."""
    import mlflow

    mode = str((job.get("tracking") or {}).get("share_reference", "auto")).lower()
    on = mode in ("true", "1", "yes") or (mode == "auto" and not tracking_uri.startswith("sqlite:"))
    return mlflow.MlflowClient(tracking_uri) if on else None


def measure_fidelity_stage(
    ref: Reference, quant: QuantizedModel, fidelity_cfg: Mapping[str, Any], cache_dir: Path, client: Any = None
) -> FidelityResult:
    """``fid.*`` metrics of the quant against the cached reference for one (corpus, context) setting; with a
    ``client``, the reference cache is fetched from the tracking store when a teammate published it, and published
    when this job built it."""
    result = measure_setting(
        ref, quant.model, dict(fidelity_cfg), cache_dir=cache_dir, client=client, publish_new=client is not None
    )
    if not result.ok:
        raise BrokenQuantError(f"fidelity {result.corpus}.{result.context}: {result.error}")
    return result


_PERF: dict[str, PerfResult] = {}


def perf_workload(perf_cfg: Mapping[str, Any]) -> PerfWorkload | None:
    """The ``perf`` node as a workload (None when ``perf.enabled=false``); a bad value raises ``ValueError``."""
    if not perf_cfg.get("enabled", True):
        return None
    keys = ("prompt_tokens", "new_tokens", "batch", "repeats")
    return PerfWorkload(**{k: perf_cfg[k] for k in keys if k in perf_cfg})


def perf_stage(quant: QuantizedModel, perf_cfg: Mapping[str, Any]) -> PerfResult | None:
    """Speed and memory of the quant on the fixed workload, measured once per quant per worker (the fidelity
    settings of one quant reuse it, as they reuse the quantized model)."""
    workload = perf_workload(perf_cfg)
    if workload is None:
        return None
    key = f"{quant.fingerprint}/{workload.label}"
    if key not in _PERF:
        _PERF.clear()
        _PERF[key] = measure_perf(quant.model, workload)
        r = _PERF[key]
        log.info(
            "perf %s: prefill %.0f tok/s, decode %.0f tok/s, peak %.1f MiB (%s), %.2f s", quant.name,
            r.prefill_tokens_per_s, r.decode_tokens_per_s, r.peak_memory_bytes / 2**20, r.memory_method, r.seconds,
        )  # fmt: skip
    return _PERF[key]


def _limit(bench_cfg: Mapping[str, Any]) -> int | None:
    limit = bench_cfg.get("limit")
    return int(limit) if limit else None


def _share_key(path: Path, cache_dir: Path) -> str:
    """A reference outcome file's key: its place in the outcome cache (reference fingerprint / task / version-key)."""
    return hashlib.sha256(str(path.relative_to(cache_dir)).encode()).hexdigest()[:32]


def bench_stage(
    ref: Reference, quant: QuantizedModel, bench_cfg: Mapping[str, Any], cache_dir: Path, client: Any = None
) -> pd.DataFrame:
    """Per-prompt outcomes of the quant on the task suite, through the bench stage's outcome cache (keyed by the
    quant's fingerprint): the second fidelity setting of the same quant reads them back instead of generating.

    With a ``client``, the reference's outcome tables are fetched from the tracking store when a teammate published
    them (verified by key and content hash) and published when computed here.
    """
    tasks = list(bench_cfg.get("tasks") or [])
    chat = bool(bench_cfg.get("chat_template", False))
    paths = []
    if client is not None and quant.is_reference:
        paths = [
            outcome_cache_path(quant.fingerprint, load_task(t), _limit(bench_cfg), None, cache_dir, chat) for t in tasks
        ]
        for path in paths:
            if not path.is_file():
                fetch_file(client, S.ROLE_REFOUTCOMES, _share_key(path, cache_dir), path)
    out = cached_outcomes(
        quant.model,
        ref.tokenizer,
        quant.fingerprint,
        tasks,
        max_prompts=_limit(bench_cfg),
        cache_dir=cache_dir,
        chat_template=chat,
    )
    for path in paths:
        if path.is_file():
            publish_file(client, S.ROLE_REFOUTCOMES, _share_key(path, cache_dir), path)
    return out


def log_outcome_table(outcomes: pd.DataFrame) -> None:
    """The outcomes as an MLflow table (the UI's artifact view shows prompt, output, pass/fail, per-prompt KLD)."""
    import mlflow

    cols = [c for c in S.OUTCOMES_TABLE_COLUMNS if c in outcomes]
    table = outcomes[cols].copy()
    for c in ("prompt", "output", "expected"):
        if c in table:
            table[c] = table[c].astype(str)
    mlflow.log_table(table, artifact_file=S.OUTCOMES_TABLE_ARTIFACT)


def corpus_input(result: FidelityResult, cache_dir: Path) -> tuple[Any, str]:
    """The fidelity corpus as an MLflow dataset: name ``corpus:<name>``, digest = SHA-256 of the corpus windows the
    reference cache was built on (its manifest), so two runs on the same text show the same dataset."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    digest = result.cache_key
    manifest = Path(cache_dir) / "refcache" / result.cache_key / "manifest.json"
    if manifest.is_file():
        digest = json.loads(manifest.read_text()).get("corpus_sha256", digest)
    source = CodeDatasetSource({"corpus": result.corpus, "context": str(result.context)})
    return MetaDataset(source, name=f"corpus:{result.corpus}", digest=str(digest)[:36]), S.INPUT_CONTEXT_CORPUS


def task_inputs(outcomes: pd.DataFrame) -> list[tuple[Any, str]]:
    """Each benchmark task's prompts (id, prompt, expected) as an MLflow dataset; MLflow digests the content."""
    import mlflow.data

    out = []
    cols = [c for c in ("prompt_id", "prompt", "expected") if c in outcomes]
    for task, group in outcomes.groupby("task", sort=True):
        frame = group[cols].astype(str).reset_index(drop=True)
        out.append((mlflow.data.from_pandas(frame, name=f"task:{task}"), S.INPUT_CONTEXT_TASK))
    return out


def log_inputs(client: Any, run_id: str, inputs: list[tuple[Any, str]]) -> None:
    """All of a run's inputs in one request (``log_inputs``), each with its ``mlflow.data.context`` tag."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if inputs:
        client.log_inputs(
            run_id,
            [DatasetInput(d._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, ctx)]) for d, ctx in inputs],
        )


def _kld_cache_path(
    ref: Reference,
    quant: QuantizedModel,
    bench_cfg: Mapping[str, Any],
    cache_dir: Path,
    direction_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Per-prompt KLD of a quant, beside its outcomes: keyed by both models, the tasks' outcome cache keys and the
    direction settings of the label-free columns."""
    tasks = [load_task(t) for t in bench_cfg.get("tasks") or []]
    chat = bool(bench_cfg.get("chat_template", False))
    keys = [outcome_cache_path(quant.fingerprint, t, _limit(bench_cfg), None, cache_dir, chat).name for t in tasks]
    payload = json.dumps(
        {
            "quant": quant.fingerprint,
            "reference": ref.fingerprint,
            "tasks": keys,
            "direction": _labelfree(direction_cfg),
        },
        sort_keys=True,
    )
    return cache_dir / "kld" / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.parquet"


def _labelfree(direction_cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    cfg = dict(direction_cfg or {})
    return {"confident": float(cfg.get("confident", 0.5))} if cfg.get("enabled") else None


def per_prompt_kld_stage(
    ref: Reference,
    quant: QuantizedModel,
    outcomes: pd.DataFrame,
    bench_cfg: Mapping[str, Any],
    cache_dir: Path,
    client: Any = None,
    direction_cfg: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Add ``kld_prompt`` / ``kld_completion`` (the fidelity stage's per-prompt KLD) to the outcome table.

    The completion is the reference's own output on the prompt (teacher-forced into the quant); for the reference
    itself both are 0 by definition (same model, same logits) and are not recomputed. With ``direction.enabled`` the
    label-free direction columns (quantfid.api.schema.DIRECTION_COLUMNS) come from the same reference completions.
    """
    out = outcomes.copy()
    labelfree = _labelfree(direction_cfg)
    if quant.is_reference:
        out["kld_prompt"], out["kld_completion"] = 0.0, 0.0
        if labelfree is not None:
            out["dir_expected_netflip"], out["dir_confident_disagree"], out["ctl_js_refcont"] = 0.0, 0.0, 0.0
        return out
    path = _kld_cache_path(ref, quant, bench_cfg, cache_dir, direction_cfg)
    if path.exists():
        return pd.read_parquet(path)
    ref_out = bench_stage(ref, reference_quant(ref), bench_cfg, cache_dir, client)
    completions = out["prompt_hash"].map(ref_out.drop_duplicates("prompt_hash").set_index("prompt_hash")["output"])
    cols = per_prompt_fidelity(
        ref.model,
        quant.model,
        ref.tokenizer,
        out["prompt"].tolist(),
        completions.fillna("").astype(str).tolist(),
        confident=None if labelfree is None else labelfree["confident"],
    )
    for k, v in cols.items():
        out[k] = v
    write_parquet_atomic(out, path)
    return out


def _calibration_items(
    ref: Reference, task_names: list[str], n: int | None, cache_dir: Path
) -> tuple[list[CalibrationItem], pd.DataFrame]:
    """The calibration prompts of every bench task with their gold answers and the reference's own outputs (its
    greedy generation or chosen choice, from the bench stage's scoring: cached per reference)."""
    ref_out = calibration_outcomes(ref.model, ref.tokenizer, ref.fingerprint, task_names, n=n, cache_dir=cache_dir)
    items = []
    for name in task_names:
        task = load_task(name)
        stop = task.generation.stop[0] if task.scoring.type in ("exact", "execute") and task.generation.stop else ""
        outputs = ref_out[ref_out["task"] == task.name].set_index("prompt_hash")["output"]
        for p in calibration_instances(name, n):
            items.append(
                CalibrationItem(p.text, p.expected, str(outputs[p.prompt_hash]), p.choices, p.answer_index, stop)
            )
    return items, ref_out


def direction_stage(
    ref: Reference,
    quant: QuantizedModel,
    direction_cfg: Mapping[str, Any],
    bench_cfg: Mapping[str, Any],
    cache_dir: Path,
) -> dict[str, float]:
    """Direction-aware ``fid.*`` metrics and volume controls of the quant on the calibration prompts of the bench
    tasks (docs/fidelity.md), computed once per (reference, quant, settings) and cached: every fidelity setting's
    run of the quant logs the same numbers."""
    cfg = dict(direction_cfg or {})
    if not cfg.get("enabled"):
        return {}
    tasks = list(bench_cfg.get("tasks") or [])
    n = int(cfg["n_per_task"]) if cfg.get("n_per_task") else None
    settings = {k: cfg.get(k) for k in ("n_per_task", "behavioural", "confident", "topk")}
    hashes = {t: sorted(p.prompt_hash for p in calibration_instances(t, n)) for t in tasks}
    key = json.dumps(
        {"ref": ref.fingerprint, "quant": quant.fingerprint, "cal": hashes, "cfg": settings}, sort_keys=True
    )
    path = cache_dir / "direction" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    items, ref_out = _calibration_items(ref, tasks, n, cache_dir)
    metrics, _ = measure_direction(
        ref.model,
        quant.model,
        ref.tokenizer,
        items,
        confident=float(cfg.get("confident", 0.5)),
        topk=int(cfg.get("topk", 5)),
    )
    if cfg.get("behavioural"):
        q_out = calibration_outcomes(quant.model, ref.tokenizer, quant.fingerprint, tasks, n=n, cache_dir=cache_dir)
        merged = ref_out.merge(q_out, on=["task", "prompt_hash"], suffixes=("_ref", "_quant"), validate="one_to_one")
        metrics.update(behavioural_metrics(merged["passed_ref"], merged["passed_quant"]))
    metrics = {k: float(v) for k, v in metrics.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics))
    tmp.replace(path)
    return metrics
