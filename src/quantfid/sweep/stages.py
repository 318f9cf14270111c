"""Thin call sites of the pipeline stages, so the job reads as the pipeline: load -> quantize -> measure -> bench.

Each function hands its config to the stage package (quantfid.quant, quantfid.fidelity, quantfid.bench) and returns
what the tracking layer logs. Nothing here computes a metric.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import quantfid
from quantfid.models.loading import ModelSpec, Reference, load_reference

log = logging.getLogger(__name__)


@dataclass
class QuantStageResult:
    """What the sweep needs of a quantized model: the model, its name and fingerprint, its size facts."""

    model: Any
    name: str
    config: dict[str, Any]
    fingerprint: str
    bits_per_weight: float
    model_bytes: float
    is_reference: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


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


_LAST_QUANT: dict[str, QuantStageResult] = {}


def quantize_stage(ref: Reference, quant_cfg: Mapping[str, Any], quant_name: str) -> QuantStageResult:
    """Quantize the loaded reference with the backend registry (``quantfid.quant.quantize``).

    A config without a ``name`` takes the config-group option that selected it (``quant=rtn_w4g64``).
    """
    from quantfid.quant import quantize

    cfg = {"name": quant_name, **dict(quant_cfg)}
    key = json.dumps({"ref": ref.fingerprint, "quant": cfg}, sort_keys=True, default=str)
    if key in _LAST_QUANT:  # the next fidelity setting of the same quant (the sweep's inner loop)
        return _LAST_QUANT[key]
    _LAST_QUANT.clear()  # one quantized model in memory at a time
    qm = quantize(ref.spec, cfg, reference=ref)
    _LAST_QUANT[key] = QuantStageResult(
        model=qm.model,
        name=str(qm.name),
        config=dict(qm.config),
        fingerprint=str(qm.fingerprint),
        bits_per_weight=float(qm.bits_per_weight),
        model_bytes=float(qm.model_bytes),
        is_reference=str(qm.config.get("backend")) in ("reference", "none"),
        extra={"verification": getattr(qm, "verification", {})},
    )
    return _LAST_QUANT[key]


def validate_quant_stage(quant_cfg: Mapping[str, Any], quant_name: str) -> dict[str, Any]:
    """Schema check of the quant config before any model is loaded; returns the resolved config."""
    from quantfid.quant import validate_quant_config

    return dict(validate_quant_config({"name": quant_name, **dict(quant_cfg)}).resolved)


class BrokenQuantError(RuntimeError):
    """The fidelity stage found the quant broken (NaN/inf logits): the job is recorded FAILED with this message."""


def measure_fidelity_stage(
    ref: Reference, quant: QuantStageResult, fidelity_cfg: Mapping[str, Any], cache_dir: Path
) -> dict[str, float]:
    """``fid.*`` metrics of the quant against the cached reference for one (corpus, context) setting."""
    from quantfid.fidelity import measure_setting

    result = measure_setting(ref, quant.model, dict(fidelity_cfg), cache_dir=cache_dir / "refcache")
    if not result.ok:
        raise BrokenQuantError(f"fidelity {result.corpus}.{result.context}: {result.error}")
    return {k: float(v) for k, v in result.metrics.items()}


def bench_stage(ref: Reference, quant: QuantStageResult, bench_cfg: Mapping[str, Any], cache_dir: Path) -> pd.DataFrame:
    """Per-prompt outcomes of the quant on the task suite; cached on disk per (quant fingerprint, bench config).

    The cache is what makes a sweep over fidelity settings cheap: the outcomes of one quant do not depend on the
    fidelity setting, so the second setting of the same quant reads them back instead of generating again.
    """
    path = _outcome_cache_path(ref, quant, bench_cfg, cache_dir, "outcomes")
    if path.exists():
        return pd.read_parquet(path)
    from quantfid.bench import run_tasks

    tasks = list(bench_cfg.get("tasks") or [])
    limit = bench_cfg.get("limit")
    outcomes = run_tasks(quant.model, ref.tokenizer, tasks, max_prompts=int(limit) if limit else None)
    _write_atomic(outcomes, path)
    return outcomes


def _outcome_cache_path(
    ref: Reference, quant: QuantStageResult, bench_cfg: Mapping[str, Any], cache_dir: Path, kind: str
) -> Path:
    from quantfid.bench.registry import find_task_file

    who = f"reference:{ref.fingerprint}" if quant.is_reference else quant.fingerprint
    # The task files are part of the key: editing a task (prompts, scoring) must not reuse old outcomes.
    files = {t: hashlib.sha256(find_task_file(t).read_bytes()).hexdigest() for t in bench_cfg.get("tasks") or []}
    payload = {"quant": who, "bench": dict(bench_cfg), "task_files": files, "version": quantfid.__version__}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    return cache_dir / "outcomes" / f"{key.hexdigest()[:24]}.{kind}.parquet"


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write then rename: a worker killed mid-write leaves no half file for the next one to trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def tokenizer_fp(ref: Reference) -> str:
    from quantfid.models.loading import tokenizer_fingerprint

    return tokenizer_fingerprint(ref.tokenizer)


def reference_as_quant(ref: Reference) -> QuantStageResult:
    """The unquantized reference in the quant's shape (its outcomes are the ones every flip is counted against)."""
    return QuantStageResult(ref.model, "reference", {"backend": "reference"}, ref.fingerprint, 32.0, 0.0, True)


def per_prompt_kld_stage(
    ref: Reference,
    quant: QuantStageResult,
    outcomes: pd.DataFrame,
    bench_cfg: Mapping[str, Any],
    cache_dir: Path,
) -> pd.DataFrame:
    """Add ``kld_prompt`` / ``kld_completion`` (the fidelity stage's per-prompt KLD) to the outcome table.

    The completion is the reference's own output on the prompt (teacher-forced into the quant); for the reference
    itself both are 0 by definition (same model, same logits) and are not recomputed.
    """
    out = outcomes.copy()
    if quant.is_reference:
        out["kld_prompt"], out["kld_completion"] = 0.0, 0.0
        return out
    if "prompt" not in out:
        log.warning("the bench stage gave no prompt texts: kld_prompt/kld_completion stay NaN")
        return out
    path = _outcome_cache_path(ref, quant, bench_cfg, cache_dir, "kld")
    if path.exists():
        return pd.read_parquet(path)
    from quantfid.fidelity import per_prompt_kld

    ref_out = bench_stage(ref, reference_as_quant(ref), bench_cfg, cache_dir)
    completions = out["prompt_hash"].map(ref_out.drop_duplicates("prompt_hash").set_index("prompt_hash")["output"])
    pairs = per_prompt_kld(
        ref.model, quant.model, ref.tokenizer, out["prompt"].tolist(), completions.fillna("").astype(str).tolist()
    )
    out["kld_prompt"] = [p for p, _ in pairs]
    out["kld_completion"] = [c for _, c in pairs]
    _write_atomic(out, path)
    return out
