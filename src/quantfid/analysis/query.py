"""Read a cohort from the tracking store, and only from it (schema: docs/schema.md).

Runs are selected by experiment, sweep id(s) and an optional MLflow filter string; only FINISHED runs of role
``quant``/``reference`` count. Runs of one quant (same ``quantfid.quant_fingerprint``) at different fidelity settings
merge into one cohort row whose variants are named ``<stat>@<corpus>.<context>``. Per-prompt outcome tables are read
in parallel (a thread pool; local artifact stores are read in place). Mixing reference or tokenizer fingerprints is
refused: the quants would not be measured against the same thing.
"""

from __future__ import annotations

import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from quantfid.analysis.cohort import COMPOSITE, N_PREFIX, SCORE_PREFIX, AnalysisInputError, Cohort

SCHEMA_VERSION = "1"
OUTCOMES_PATH = "outcomes/outcomes.parquet"
TAG = "quantfid."
_BENCH = re.compile(r"^bench\.(.+)\.(acc|n)$")
_READ_COLUMNS = ["task", "prompt_id", "passed", "kld_prompt", "kld_completion"]


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
                if r.data.tags.get(TAG + "role") not in ("quant", "reference"):
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
    ver = runs.get(f"tags.{TAG}schema_version")
    if ver is None or (ver != SCHEMA_VERSION).any():
        bad = sorted(set(ver.dropna())) if ver is not None else ["missing"]
        raise AnalysisInputError(
            f"runs carry quantfid.schema_version {bad}; this analysis reads version {SCHEMA_VERSION} (docs/schema.md)"
        )
    fp = runs.get(f"tags.{TAG}quant_fingerprint", pd.Series(index=runs.index, dtype=object))
    names = runs.get(f"tags.{TAG}quant_name", pd.Series(index=runs.index, dtype=object))
    role = runs[f"tags.{TAG}role"]
    key = np.where(role == "reference", "reference", fp.fillna(names).astype(str))
    if (role == "quant").any() and names[role == "quant"].isna().any():
        raise AnalysisInputError("quant run(s) lack the quantfid.quant_name tag; schema v1 requires it")
    label = {}
    for k, grp in runs.groupby(key):
        n = "reference" if k == "reference" else str(names[grp.index[0]])
        label[k] = n
    counts = pd.Series(label).value_counts()
    for k, n in list(label.items()):  # same name, different fingerprints (e.g. group sizes): keep both, distinctly
        if counts[n] > 1 and k != "reference":
            label[k] = f"{n}#{str(k)[:8]}"
    corpus = runs.get("params.fidelity.corpus")
    context = runs.get("params.fidelity.context")
    records: dict[str, dict[str, float]] = {}
    outcome_runs: dict[str, list[str]] = {}
    variants: set[str] = set()
    tasks: set[str] = set()
    for i, (k, (_, run)) in enumerate(zip(key, runs.iterrows(), strict=True)):
        q = label[k]
        rec = records.setdefault(q, {})
        outcome_runs.setdefault(q, []).append(i)
        setting = ""
        if corpus is not None and isinstance(corpus.iloc[i], str):
            setting = f"@{corpus.iloc[i]}" + (
                f".{context.iloc[i]}" if context is not None and isinstance(context.iloc[i], str) else ""
            )
        for col, v in run.items():
            if not col.startswith("metrics.") or v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            m = col[len("metrics.") :]
            if m.startswith("fid."):
                name = m[4:] + setting
                rec[name] = float(v)
                variants.add(name)
            elif mb := _BENCH.match(m):
                task, kind = mb.groups()
                col_name = (SCORE_PREFIX if kind == "acc" else N_PREFIX) + task
                rec.setdefault(col_name, float(v))
                if task != COMPOSITE:
                    tasks.add(task)
    table = pd.DataFrame.from_dict(records, orient="index")
    table.index.name = "quant"
    if "reference" not in table.index:
        raise AnalysisInputError(
            "no FINISHED run of role 'reference' in the selection; the analysis compares every "
            "quant with it. Check the sweep logged its reference run"
        )
    if SCORE_PREFIX + COMPOSITE not in table.columns:
        raise AnalysisInputError("runs lack the bench.composite.acc metric (schema v1); no benchmark score to analyse")
    missing = table[SCORE_PREFIX + COMPOSITE].isna()
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


def _read_outcomes(run_id: str, artifact_uri: str, tracking_uri: str | None, tmp: str) -> pd.DataFrame | None:
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
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in ("task", "prompt_id", "passed") if c not in names]
    if missing:
        raise AnalysisInputError(f"run {run_id}: {OUTCOMES_PATH} lacks column(s) {missing} (schema v1)")
    frame = pq.read_table(path, columns=[c for c in _READ_COLUMNS if c in names]).to_pandas()
    return frame


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
    outcomes = None
    if with_outcomes:

        def fetch(q: str) -> pd.DataFrame | None:
            for rid in candidates[q]:
                f = _read_outcomes(rid, uri_of[rid], tracking_uri, tmp)
                if f is not None:
                    f.insert(0, "quant", q)
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
            outcomes = pd.concat(have, ignore_index=True)
            outcomes["task"] = outcomes["task"].astype(str).str.replace("/", ".", regex=False)
            outcomes["prompt_id"] = outcomes["prompt_id"].astype(str)
    sweeps = sorted(runs[f"tags.{TAG}sweep_id"].dropna().unique()) if f"tags.{TAG}sweep_id" in runs else []
    source = {"kind": "mlflow", "tracking_uri": str(tracking_uri), "experiments": experiments, "sweep_ids": sweeps,
              "filter": filter_string, "n_runs": len(runs), "reference_fingerprint": ref_fp,
              "tokenizer_fingerprint": tok_fp}  # fmt: skip
    return Cohort(table, variants, tasks, "reference", outcomes, source)
