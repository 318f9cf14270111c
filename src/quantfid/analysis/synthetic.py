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

from quantfid.analysis.cohort import Cohort
from quantfid.api import schema as S
from quantfid.api.variants import variant_name

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
    facts: dict[str, dict[str, float]] | None = None  # quant.bits_per_weight, quant.model_bytes


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
            fidelity[name][(corpus, ctx)] = {f"{S.FIDELITY_PREFIX}{s}": float(v) for s, v in m.items()}
    # quant facts: bits per weight falls as damage rises (2-8 bits), bytes follow (a 10M-weight model)
    facts = {}
    for name, d in zip(names, damage, strict=True):
        bits = 32.0 if name == S.REFERENCE_NAME else float(np.clip(8.0 - 6.0 * (d / max_damage) ** 0.5, 2.0, 8.0))
        facts[name] = {S.METRIC_BITS_PER_WEIGHT: bits, S.METRIC_MODEL_BYTES: bits * 1.25e6}
    return SyntheticCohort(names, damage, fidelity, bench, outcomes, facts)


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
    common = {S.TAG_SCHEMA: S.SCHEMA_VERSION, S.TAG_SWEEP: sweep_id, S.TAG_REFERENCE: reference_fingerprint,
              S.TAG_TOKENIZER: tokenizer_fingerprint, S.TAG_SYNTHETIC: "true"}  # fmt: skip
    sweep = client.create_run(exp_id, tags={**common, S.TAG_ROLE: S.ROLE_SWEEP}, run_name=sweep_id)
    jobs = [(n, s) for n in cohort.names for s in cohort.fidelity[n]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (corpus, ctx) in tqdm(jobs, desc="writing synthetic runs", disable=not progress):
            role = S.ROLE_REFERENCE if name == S.REFERENCE_NAME else S.ROLE_QUANT
            tags = {**common, S.TAG_ROLE: role, S.TAG_QUANT_NAME: name, S.TAG_QUANT_FP: f"qfp-{name}",
                    S.TAG_IDENTITY: f"id-{name}-{corpus}-{ctx}", "mlflow.parentRunId": sweep.info.run_id}  # fmt: skip
            run = client.create_run(exp_id, tags=tags, run_name=f"{name}-{corpus}-{ctx}")
            params = {"model.name_or_path": "synthetic", "model.dtype": "float32",
                      "quant.backend": "none" if role == "reference" else "synthetic",
                      S.PARAM_CORPUS: corpus, S.PARAM_CONTEXT: str(ctx)}  # fmt: skip
            facts = (cohort.facts or {}).get(name, {})
            metrics = {**cohort.fidelity[name][(corpus, ctx)], **cohort.bench[name], **facts}
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag("quantfid.damage", f"{cohort.damage[cohort.names.index(name)]:.6g}")],
            )
            artifact = Path(S.OUTCOMES_ARTIFACT)
            path = Path(tmp) / name / artifact.name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                cohort.outcomes[name].to_parquet(path, index=False)
            client.log_artifact(run.info.run_id, str(path), artifact_path=str(artifact.parent))
            client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(sweep.info.run_id, "FINISHED")
    return exp_id


def to_cohort(syn: SyntheticCohort, setting_names: bool = True) -> Cohort:
    """The same cohort the store query would build from ``write_to_mlflow(syn, ...)``, in memory (no MLflow): for
    tests and for timing the analysis without a store."""
    rows = {}
    variants: set[str] = set()
    for name in syn.names:
        rec = {}
        for (corpus, ctx), m in syn.fidelity[name].items():
            for k, v in m.items():
                stat = k[len(S.FIDELITY_PREFIX):]
                vn = variant_name(stat, corpus, ctx) if setting_names else stat
                rec[vn] = v
                variants.add(vn)
        for k, v in syn.bench[name].items():
            task, kind = k[len("bench."):].rsplit(".", 1)
            rec[("score." if kind == "acc" else "n.") + task] = v
        rec.update((syn.facts or {}).get(name, {}))
        rows[name] = rec
    table = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    table.index.name = "quant"
    frames = []
    for name in syn.names:
        o = syn.outcomes[name][["task", "prompt_id", "passed", "kld_prompt", "kld_completion"]].copy()
        o.insert(0, "quant", name)
        frames.append(o)
    outcomes = pd.concat(frames, ignore_index=True)
    outcomes["task"] = outcomes["task"].str.replace("/", ".", regex=False)
    tasks = sorted(outcomes["task"].unique())
    return Cohort(table, sorted(variants), tasks, "reference", outcomes, {"kind": "synthetic"})


def make_flip_cohort(
    rates: dict[str, tuple[float, float]],
    tasks: tuple[str, ...] = ("t1", "t2"),
    n_prompts: int = 400,
    ref_accuracy: float = 0.6,
    metrics: dict[str, dict[str, float]] | None = None,
    kld_of: dict[str, float] | None = None,
    seed: int = 0,
) -> Cohort:
    """An in-memory cohort with known flip rates: quant ``q`` loses each prompt the reference passes with probability
    ``rates[q][0]`` and gains each it fails with probability ``rates[q][1]``; its true accuracy difference is
    (1 - a) gain - a loss at reference accuracy a (``ref_accuracy``, exactly: the reference passes round(a n) prompts
    per task). ``metrics[q]`` are its fidelity metrics (default: ``kld_mean`` = loss + gain); per-prompt KLD is
    lognormal around ``kld_of[q]`` (default: the same)."""
    rng = np.random.default_rng(seed)
    names = ["reference", *rates]
    ref = {}
    for t in tasks:
        r = np.zeros(n_prompts, dtype=bool)
        r[rng.permutation(n_prompts)[: round(ref_accuracy * n_prompts)]] = True
        ref[t] = r
    rows, frames = {}, []
    for q in names:
        lo, ga = (0.0, 0.0) if q == "reference" else rates[q]
        rec = dict((metrics or {}).get(q, {"kld_mean": 0.0 if q == "reference" else lo + ga}))
        parts = []
        for t in tasks:
            u = rng.random(n_prompts)
            passed = np.where(ref[t], u >= lo, u < ga)
            base = 0.0 if q == "reference" else (kld_of or {}).get(q, lo + ga + 1e-3)
            kld = base * rng.lognormal(0.0, 1.0, n_prompts)
            parts.append(pd.DataFrame({"quant": q, "task": t, "prompt_id": [f"{t}-{j}" for j in range(n_prompts)],
                                       "passed": passed, "kld_prompt": kld, "kld_completion": kld}))  # fmt: skip
            rec[f"score.{t}"] = float(passed.mean())
            rec[f"n.{t}"] = float(n_prompts)
        o = pd.concat(parts, ignore_index=True)
        rec["score.composite"] = float(o["passed"].mean())
        rec["n.composite"] = float(len(o))
        rows[q] = rec
        frames.append(o)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "quant"
    variants = [c for c in table.columns if not c.startswith(("score.", "n."))]
    return Cohort(table, variants, list(tasks), "reference", pd.concat(frames, ignore_index=True),
                  {"kind": "synthetic-flips"})  # fmt: skip
