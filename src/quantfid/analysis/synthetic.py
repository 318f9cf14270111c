"""A synthetic cohort with known properties, written to an MLflow store exactly as the schema (docs/schema.md) says.

Used by the tests and the benchmark, and handy for trying the analysis without running a sweep. It is NOT a stand-in
for measured results: every run it writes is tagged ``quantfid.synthetic=true``.

Known properties: quant i has a damage level d_i (the first ``n_identical`` quants have d = 0 and reproduce the
reference's outcomes exactly); each prompt the reference passes is lost with probability d_i, each it fails is gained
with probability ``gain_ratio`` x d_i; per-prompt KLD is lognormal around a base that grows with d_i, multiplied by
``fail_kld_ratio`` on prompts the quant fails; every fidelity statistic is a noisy monotone function of the base.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

STATS = (
    "kld_mean", "kld_median", "kld_p90", "kld_p99", "kld_max", "kld_seqmean", "kld_rev_mean",
    "ppl_quant", "ppl_ratio", "ln_ppl_ratio", "ppl_diff", "top1_agree", "kld_mean_se", "rms_dp",
)  # fmt: skip
_SCALE = {"kld_median": 0.4, "kld_p90": 2.5, "kld_p99": 8.0, "kld_max": 40.0, "kld_seqmean": 1.0,
          "kld_rev_mean": 1.1, "kld_mean_se": 0.01, "rms_dp": 3.0}  # fmt: skip


@dataclass
class SyntheticCohort:
    """Names, damage levels, per-setting fidelity metrics, bench metrics and per-prompt outcomes of every quant."""

    names: list[str]  # "reference" first
    damage: np.ndarray
    fidelity: dict[str, dict[tuple[str, int], dict[str, float]]]
    bench: dict[str, dict[str, float]]
    outcomes: dict[str, pd.DataFrame]


def make_synthetic_cohort(
    n_quants: int = 20,
    tasks: tuple[str, ...] = ("organism/arith", "organism/lookup"),
    n_prompts: int = 100,
    settings: tuple[tuple[str, int], ...] = (("code", 256),),
    n_identical: int = 2,
    max_damage: float = 0.4,
    gain_ratio: float = 0.25,
    fail_kld_ratio: float = 1.15,
    seed: int = 0,
) -> SyntheticCohort:
    """Draw a cohort (see the module docstring for its known properties)."""
    rng = np.random.default_rng(seed)
    names = ["reference", *(f"q{i:04d}" for i in range(n_quants))]
    damage = np.concatenate([[0.0], np.zeros(n_identical), np.geomspace(1e-3, max_damage, n_quants - n_identical)])
    ref_pass = {t: rng.random(n_prompts) < rng.uniform(0.45, 0.75) for t in tasks}
    fidelity: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
    bench: dict[str, dict[str, float]] = {}
    outcomes: dict[str, pd.DataFrame] = {}
    for name, d in zip(names, damage, strict=True):
        base = 0.0 if name == "reference" else 0.5 * d + 1e-4
        frames = []
        for t in tasks:
            rp = ref_pass[t]
            u = rng.random(n_prompts)
            passed = np.where(rp, u >= d, u < gain_ratio * d)
            kld_c = base * rng.lognormal(0.0, 1.0, n_prompts) * np.where(passed, 1.0, fail_kld_ratio)
            kld_p = base * rng.lognormal(0.0, 1.0, n_prompts)
            pids = [f"{t.split('/')[-1]}-{j:05d}" for j in range(n_prompts)]
            frames.append(pd.DataFrame({
                "task": t, "prompt_id": pids, "prompt_hash": pids, "output": np.where(passed, "ok", "bad"),
                "passed": passed, "score": passed.astype(float), "kld_prompt": kld_p, "kld_completion": kld_c,
            }))  # fmt: skip
        out = pd.concat(frames, ignore_index=True)
        outcomes[name] = out
        b = {f"bench.{t.replace('/', '.')}.acc": float(g["passed"].mean()) for t, g in out.groupby("task")}
        b |= {f"bench.{t.replace('/', '.')}.n": float(len(g)) for t, g in out.groupby("task")}
        b["bench.composite.acc"] = float(out["passed"].mean())
        bench[name] = b
        fidelity[name] = {}
        for corpus, ctx in settings:
            noise = rng.lognormal(0.0, 0.15, len(STATS))
            k = base * (1.0 + 0.2 * (ctx < 256))
            m = {}
            for s, z in zip(STATS, noise, strict=True):
                if s == "ppl_quant":
                    m[s] = 5.0 * (1 + k * z)
                elif s == "ppl_ratio":
                    m[s] = 1 + k * z
                elif s == "ln_ppl_ratio":
                    m[s] = float(np.log1p(k * z))
                elif s == "ppl_diff":
                    m[s] = 5.0 * k * z
                elif s == "top1_agree":
                    m[s] = max(0.0, 1 - 0.3 * k * z)
                else:
                    m[s] = _SCALE.get(s, 1.0) * k * z
            fidelity[name][(corpus, ctx)] = {f"fid.{s}": float(v) for s, v in m.items()}
    return SyntheticCohort(names, damage, fidelity, bench, outcomes)


def write_to_mlflow(
    cohort: SyntheticCohort,
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None = None,
    sweep_id: str = "synthetic-sweep",
    reference_fingerprint: str = "ref-synthetic",
    tokenizer_fingerprint: str = "tok-synthetic",
    progress: bool = True,
) -> str:
    """Write the cohort as one sweep (schema v1): a sweep run, a reference run and quant runs per fidelity setting.

    Returns the experiment id.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    common = {"quantfid.schema_version": "1", "quantfid.sweep_id": sweep_id,
              "quantfid.reference_fingerprint": reference_fingerprint,
              "quantfid.tokenizer_fingerprint": tokenizer_fingerprint, "quantfid.synthetic": "true"}  # fmt: skip
    sweep = client.create_run(exp_id, tags={**common, "quantfid.role": "sweep"}, run_name=sweep_id)
    jobs = [(n, s) for n in cohort.names for s in cohort.fidelity[n]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (corpus, ctx) in tqdm(jobs, desc="writing synthetic runs", disable=not progress):
            role = "reference" if name == "reference" else "quant"
            tags = {**common, "quantfid.role": role, "quantfid.quant_name": name,
                    "quantfid.quant_fingerprint": f"qfp-{name}", "quantfid.run_identity": f"id-{name}-{corpus}-{ctx}",
                    "mlflow.parentRunId": sweep.info.run_id}  # fmt: skip
            run = client.create_run(exp_id, tags=tags, run_name=f"{name}-{corpus}-{ctx}")
            params = {"model.name_or_path": "synthetic", "model.dtype": "float32",
                      "quant.backend": "none" if role == "reference" else "synthetic",
                      "fidelity.corpus": corpus, "fidelity.context": str(ctx)}  # fmt: skip
            metrics = {**cohort.fidelity[name][(corpus, ctx)], **cohort.bench[name]}
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag("quantfid.damage", f"{cohort.damage[cohort.names.index(name)]:.6g}")],
            )
            path = Path(tmp) / name / "outcomes.parquet"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                cohort.outcomes[name].to_parquet(path, index=False)
            client.log_artifact(run.info.run_id, str(path), artifact_path="outcomes")
            client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(sweep.info.run_id, "FINISHED")
    return exp_id
