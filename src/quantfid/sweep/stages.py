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

from quantfid.api.io import write_parquet_atomic
from quantfid.bench import cached_outcomes
from quantfid.bench.cache import outcome_cache_path
from quantfid.bench.calibration import calibration_instances, calibration_outcomes
from quantfid.bench.registry import load_task
from quantfid.fidelity import measure_setting
from quantfid.fidelity.direction import CalibrationItem, behavioural_metrics, measure_direction
from quantfid.fidelity.measure import per_prompt_fidelity
from quantfid.models.loading import ModelSpec, Reference, load_reference
from quantfid.quant import QuantConfigError, QuantizedModel, quantize, reference_quant, validate_quant_config

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


def is_reference_config(quant_cfg: Mapping[str, Any], quant_name: str) -> bool:
    """Does the job measure the reference itself? (An invalid config is no reference: the job fails on it.)"""
    try:
        return validate_quant_config(quant_config(quant_cfg, quant_name)).is_reference
    except QuantConfigError:
        return False


class BrokenQuantError(RuntimeError):
    """The fidelity stage found the quant broken (NaN/inf logits): the job is recorded FAILED with this message."""


def measure_fidelity_stage(
    ref: Reference, quant: QuantizedModel, fidelity_cfg: Mapping[str, Any], cache_dir: Path
) -> dict[str, float]:
    """``fid.*`` metrics of the quant against the cached reference for one (corpus, context) setting."""
    result = measure_setting(ref, quant.model, dict(fidelity_cfg), cache_dir=cache_dir)
    if not result.ok:
        raise BrokenQuantError(f"fidelity {result.corpus}.{result.context}: {result.error}")
    return {k: float(v) for k, v in result.metrics.items()}


def _limit(bench_cfg: Mapping[str, Any]) -> int | None:
    limit = bench_cfg.get("limit")
    return int(limit) if limit else None


def bench_stage(ref: Reference, quant: QuantizedModel, bench_cfg: Mapping[str, Any], cache_dir: Path) -> pd.DataFrame:
    """Per-prompt outcomes of the quant on the task suite, through the bench stage's outcome cache (keyed by the
    quant's fingerprint): the second fidelity setting of the same quant reads them back instead of generating."""
    tasks = list(bench_cfg.get("tasks") or [])
    return cached_outcomes(
        quant.model, ref.tokenizer, quant.fingerprint, tasks, max_prompts=_limit(bench_cfg), cache_dir=cache_dir
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
    keys = [outcome_cache_path(quant.fingerprint, t, _limit(bench_cfg), None, cache_dir).name for t in tasks]
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
    ref_out = bench_stage(ref, reference_quant(ref), bench_cfg, cache_dir)
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
