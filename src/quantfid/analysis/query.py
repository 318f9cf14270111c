"""Read a cohort from the tracking store, and only from it (schema: docs/schema.md).

Runs are selected by experiment, sweep id(s) and an optional MLflow filter string; only FINISHED runs of role
``quant``/``reference`` count. Runs of one quant (same ``quantfid.quant_fingerprint``) at different fidelity settings
merge into one cohort row whose variants are named ``<stat>@<corpus>.<context>``. Per-prompt outcome tables are read
in parallel (a thread pool; local artifact stores are read in place). Mixing reference or tokenizer fingerprints is
refused: the quants would not be measured against the same thing.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from quantfid.analysis.cohort import N_PREFIX, SCORE_PREFIX, AnalysisInputError, Cohort
from quantfid.api import schema as S
from quantfid.api.variants import (
    BEHAVIOURAL_DETAILS,
    CALIBRATION_DETAILS,
    CALIBRATION_STATS,
    calibration_variant_name,
    variant_name,
)

TAG = S.TAG_PREFIX
OUTCOMES_PATH = S.OUTCOMES_ARTIFACT
_READ_COLUMNS = [*S.OUTCOME_KEY_COLUMNS, *S.FIDELITY_COLUMNS, *S.DIRECTION_COLUMNS]


def search_cohort_runs(
    tracking_uri: str | None,
    experiments: list[str],
    sweep_ids: list[str] | None = None,
    filter_string: str | None = None,
) -> pd.DataFrame:
    """FINISHED quant/reference runs, one row per run: ``tags.*``, ``params.*``, ``metrics.*``, artifact_uri."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = [e.name for e in client.search_experiments(max_results=50)]
            raise AnalysisInputError(f"experiment {name!r} not found in {client.tracking_uri}; experiments: {known}")
        exp_ids.append(exp.experiment_id)
    base = "attributes.status = 'FINISHED'"
    if filter_string:
        base += f" AND {filter_string}"
    filters = [base + f" AND tags.`quantfid.sweep_id` = '{s}'" for s in sweep_ids] if sweep_ids else [base]
    rows = []
    for flt in filters:
        token = None
        while True:
            try:
                page = client.search_runs(exp_ids, flt, max_results=5000, page_token=token)
            except Exception as e:  # mlflow raises MlflowException on a malformed filter: say which input it was
                raise AnalysisInputError(f"the run filter {flt!r} was refused by MLflow: {e}") from e
            for r in page:
                if r.data.tags.get(S.TAG_ROLE) not in S.COHORT_ROLES:
                    continue
                row = {"run_id": r.info.run_id, "artifact_uri": r.info.artifact_uri}
                row |= {f"tags.{k}": v for k, v in r.data.tags.items() if k.startswith(TAG)}
                row |= {f"params.{k}": v for k, v in r.data.params.items()}
                row |= {f"metrics.{k}": v for k, v in r.data.metrics.items()}
                rows.append(row)
            token = page.token
            if not token:
                break
    if not rows:
        raise AnalysisInputError(
            f"no FINISHED quant/reference runs in experiment(s) {experiments} with sweep id(s) {sweep_ids} and filter "
            f"{filter_string!r}; check the names (quantfid.sweep_id tag) and that the sweep finished"
        )
    return pd.DataFrame(rows).drop_duplicates("run_id")


def _check_single(runs: pd.DataFrame, tag: str, what: str) -> str:
    col = f"tags.{TAG}{tag}"
    if col not in runs.columns or runs[col].isna().any():
        n = int(runs[col].isna().sum()) if col in runs.columns else len(runs)
        raise AnalysisInputError(
            f"{n} run(s) lack the {TAG}{tag} tag (schema v1 requires it); were they written by an older sweep?"
        )
    values = runs[col].value_counts()
    if len(values) > 1:
        sweeps = runs.groupby(col)[f"tags.{TAG}sweep_id"].unique() if f"tags.{TAG}sweep_id" in runs else None
        detail = "; ".join(
            f"{fp} ({values[fp]} runs, sweeps {list(sweeps[fp]) if sweeps is not None else '?'})" for fp in values.index
        )
        raise AnalysisInputError(
            f"refusing to mix runs with different {what} ({TAG}{tag}): {detail}. Quants measured against different "
            "references/tokenizers are not comparable; select one with --sweep-id or --filter"
        )
    return str(values.index[0])


def cohort_from_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str], dict[str, list[str]]]:
    """Merge runs into cohort rows. Returns (table, variants, tasks, {quant: [run ids with outcomes candidates]})."""
    ver = runs.get(f"tags.{S.TAG_SCHEMA}")
    if ver is None or (ver != S.SCHEMA_VERSION).any():
        bad = sorted(set(ver.dropna())) if ver is not None else ["missing"]
        raise AnalysisInputError(
            f"runs carry quantfid.schema_version {bad}; this analysis reads version {S.SCHEMA_VERSION} (docs/schema.md)"
        )
    fp = runs.get(f"tags.{S.TAG_QUANT_FP}", pd.Series(index=runs.index, dtype=object))
    names = runs.get(f"tags.{S.TAG_QUANT_NAME}", pd.Series(index=runs.index, dtype=object))
    role = runs[f"tags.{S.TAG_ROLE}"]
    ref = S.REFERENCE_NAME
    key = np.where(role == S.ROLE_REFERENCE, ref, fp.fillna(names).astype(str))
    if (role == S.ROLE_QUANT).any() and names[role == S.ROLE_QUANT].isna().any():
        raise AnalysisInputError("quant run(s) lack the quantfid.quant_name tag; schema v1 requires it")
    label = {}
    for k, grp in runs.groupby(key):
        n = ref if k == ref else str(names[grp.index[0]])
        label[k] = n
    counts = pd.Series(label).value_counts()
    for k, n in list(label.items()):  # same name, different fingerprints (e.g. group sizes): keep both, distinctly
        if counts[n] > 1 and k != ref:
            label[k] = f"{n}#{str(k)[:8]}"
    corpus = runs.get(f"params.{S.PARAM_CORPUS}")
    context = runs.get(f"params.{S.PARAM_CONTEXT}")
    records: dict[str, dict[str, float]] = {}
    outcome_runs: dict[str, list[str]] = {}
    variants: set[str] = set()
    tasks: set[str] = set()
    for i, (k, (_, run)) in enumerate(zip(key, runs.iterrows(), strict=True)):
        q = label[k]
        rec = records.setdefault(q, {})
        outcome_runs.setdefault(q, []).append(i)
        run_corpus = corpus.iloc[i] if corpus is not None and isinstance(corpus.iloc[i], str) else None
        run_context = context.iloc[i] if context is not None and isinstance(context.iloc[i], str) else None
        for col, v in run.items():
            if not col.startswith("metrics.") or v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            m = col[len("metrics.") :]
            if m.startswith(S.FIDELITY_PREFIX):
                stat = m[len(S.FIDELITY_PREFIX) :]
                if stat in CALIBRATION_STATS:  # one value per quant, logged on each of its runs
                    name = calibration_variant_name(stat)
                    rec.setdefault(name, float(v))
                    if stat not in BEHAVIOURAL_DETAILS and stat not in CALIBRATION_DETAILS:  # bookkeeping: table only
                        variants.add(name)
                    continue
                if run_corpus is None:  # a run without a fidelity setting: the bare statistic
                    name = stat
                elif run_context is None:
                    name = f"{stat}@{run_corpus}"
                else:
                    name = variant_name(stat, run_corpus, run_context)
                rec[name] = float(v)
                variants.add(name)
            elif m in S.QUANT_FACT_METRICS:
                rec.setdefault(m, float(v))
            elif mb := S.BENCH_METRIC.match(m):
                task, kind = mb.groups()
                col_name = (SCORE_PREFIX if kind == "acc" else N_PREFIX) + task
                rec.setdefault(col_name, float(v))
                if task != S.COMPOSITE:
                    tasks.add(task)
    table = pd.DataFrame.from_dict(records, orient="index")
    table.index.name = "quant"
    if ref not in table.index:
        raise AnalysisInputError(
            "no FINISHED run of role 'reference' in the selection; the analysis compares every "
            "quant with it. Check the sweep logged its reference run"
        )
    if SCORE_PREFIX + S.COMPOSITE not in table.columns:
        raise AnalysisInputError("runs lack the bench.composite.acc metric (schema v1); no benchmark score to analyse")
    missing = table[SCORE_PREFIX + S.COMPOSITE].isna()
    if missing.any():
        raise AnalysisInputError(f"quant(s) {list(table.index[missing])[:5]} lack bench.composite.acc")
    run_ids = runs["run_id"].tolist()
    return (
        table.sort_index(),
        sorted(variants),
        sorted(tasks),
        {q: [run_ids[i] for i in v] for q, v in outcome_runs.items()},
    )


def _local_path(artifact_uri: str) -> Path | None:
    """A local filesystem path for file-like artifact URIs (read in place, no copy), else None."""
    u = urlparse(artifact_uri)
    if u.scheme in ("", "file"):
        return Path(unquote(u.path))
    return None


def _read_outcomes(run_id: str, artifact_uri: str, tracking_uri: str | None, tmp: str):
    """The run's per-prompt table as a pyarrow Table with normalised types, or None when the run has none."""
    local = _local_path(artifact_uri)
    if local is not None:
        path = local / OUTCOMES_PATH
        if not path.exists():
            return None
    else:
        import mlflow.artifacts

        try:
            path = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=OUTCOMES_PATH, dst_path=tempfile.mkdtemp(dir=tmp),
                tracking_uri=tracking_uri))  # fmt: skip
        except Exception:  # absent artifact on a remote store: the caller tries the quant's next run
            return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in ("task", "prompt_id", "passed") if c not in names]
    if missing:
        raise AnalysisInputError(f"run {run_id}: {OUTCOMES_PATH} lacks column(s) {missing} (schema v1)")
    t = pf.read(columns=[c for c in _READ_COLUMNS if c in names])
    types = {"task": pa.string(), "prompt_id": pa.string(), "passed": pa.bool_(), "kld_prompt": pa.float64(),
             "kld_completion": pa.float64(), **{c: pa.float64() for c in S.DIRECTION_COLUMNS}}  # fmt: skip
    cols = [t.column(c).cast(types[c]) if c in t.column_names else pa.nulls(len(t), types[c]) for c in _READ_COLUMNS]
    return pa.table(cols, names=_READ_COLUMNS)


def load_cohort(
    tracking_uri: str | None,
    experiments: list[str] | str,
    sweep_ids: list[str] | None = None,
    filter_string: str | None = None,
    with_outcomes: bool = True,
    max_workers: int = 16,
    progress: bool = True,
) -> Cohort:
    """The cohort of the selected runs, with per-prompt outcomes read in parallel."""
    if isinstance(experiments, str):
        experiments = [experiments]
    runs = search_cohort_runs(tracking_uri, experiments, sweep_ids, filter_string)
    ref_fp = _check_single(runs, "reference_fingerprint", "reference fingerprints")
    tok_fp = _check_single(runs, "tokenizer_fingerprint", "tokenizer fingerprints")
    table, variants, tasks, candidates = cohort_from_runs(runs)
    uri_of = dict(zip(runs["run_id"], runs["artifact_uri"], strict=True))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar of ours, not one per file
    outcomes = None
    if with_outcomes:

        def fetch(q: str):
            for rid in candidates[q]:
                f = _read_outcomes(rid, uri_of[rid], tracking_uri, tmp)
                if f is not None:
                    return f
            return None

        quants = list(table.index)
        with tempfile.TemporaryDirectory(prefix="quantfid-outcomes-") as tmp, ThreadPoolExecutor(max_workers) as pool:
            frames = list(
                tqdm(
                    pool.map(fetch, quants),
                    total=len(quants),
                    desc="reading per-prompt outcomes",
                    disable=not progress,
                    leave=False,
                )
            )
        have = [f for f in frames if f is not None]
        if have:
            lacking = [q for q, f in zip(quants, frames, strict=True) if f is None]
            if lacking:
                raise AnalysisInputError(
                    f"quant(s) {lacking[:5]} have no {OUTCOMES_PATH} artifact while others do; re-run them or "
                    "exclude them with --filter"
                )
            import pyarrow as pa

            got = [(q, f) for q, f in zip(quants, frames, strict=True) if f is not None]
            table_pa = pa.concat_tables([f for _, f in got])
            qnames = pa.DictionaryArray.from_arrays(
                pa.array(np.repeat(np.arange(len(got)), [len(f) for _, f in got]), pa.int32()),
                pa.array([q for q, _ in got], pa.string()),
            )
            outcomes = table_pa.add_column(0, "quant", qnames).to_pandas()
            outcomes["quant"] = outcomes["quant"].astype(str)
            outcomes["task"] = outcomes["task"].str.replace("/", ".", regex=False)
    sweep_col = f"tags.{S.TAG_SWEEP}"
    sweeps = sorted(runs[sweep_col].dropna().unique()) if sweep_col in runs else []
    source = {"kind": "mlflow", "tracking_uri": str(tracking_uri), "experiments": experiments, "sweep_ids": sweeps,
              "filter": filter_string, "n_runs": len(runs), "reference_fingerprint": ref_fp,
              "tokenizer_fingerprint": tok_fp}  # fmt: skip
    return Cohort(table, variants, tasks, S.REFERENCE_NAME, outcomes, source)
