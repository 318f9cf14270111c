"""The tracking schema: the contract between the sweep, which writes MLflow runs, and the analysis, which reads them
(docs/schema.md is its prose). Every tag, param group, metric name, artifact path and outcome column has its one
home here; change it only with a :data:`SCHEMA_VERSION` bump.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported by the callers that hold outcome tables
    import pandas as pd

SCHEMA_VERSION = "1"

# ---- tags
TAG_PREFIX = "quantfid."
TAG_SCHEMA = "quantfid.schema_version"
TAG_ROLE = "quantfid.role"
TAG_SWEEP = "quantfid.sweep_id"
TAG_IDENTITY = "quantfid.run_identity"
TAG_REFERENCE = "quantfid.reference_fingerprint"
TAG_TOKENIZER = "quantfid.tokenizer_fingerprint"
TAG_QUANT_FP = "quantfid.quant_fingerprint"
TAG_QUANT_NAME = "quantfid.quant_name"
TAG_EXPERIMENT = "quantfid.experiment"
TAG_ERROR = "quantfid.error"
TAG_JOBS_PREFIX = "quantfid.jobs."
TAG_SYNTHETIC = "quantfid.synthetic"
#: Who runs a job or a sweep (``host:pid:process-start``) and when it last said so (unix seconds): a RUNNING run whose
#: owner is gone, or whose heartbeat is older than the claim timeout, is dead and is marked KILLED (tracking.claims).
TAG_OWNER = "quantfid.owner"
TAG_HEARTBEAT = "quantfid.heartbeat"
#: Why a run was ended by someone else than its owner (a dead claim taken over, a lost claim race).
TAG_ENDED_BY = "quantfid.ended_by"
#: The key a sweep invocation shares with a rerun of the same command (preset + overrides + store): the next invocation
#: of the same sweep marks a parent left RUNNING by SIGKILL as KILLED.
TAG_SWEEP_KEY = "quantfid.sweep_key"
#: MLflow's experiment tag that picks the experiment page's default view; :data:`EXPERIMENT_KIND` is its model-training
#: value (mlflow/utils/mlflow_tags.py, MLflow 3.17), which opens the page on the runs table instead of the GenAI
#: overview.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# ---- roles (the ``quantfid.role`` tag)
ROLE_SWEEP = "sweep"
ROLE_REFERENCE = "reference"
ROLE_QUANT = "quant"
ROLE_ANALYSIS = "analysis"
ROLE_REFCACHE = "refcache"
#: A reference outcome table published for teammates (tracking.shared): runs in :data:`SHARED_EXPERIMENT`.
ROLE_REFOUTCOMES = "refoutcomes"
#: Where reference artifacts (caches, outcome tables) are published in a store.
SHARED_EXPERIMENT = "quantfid-refcache"
#: A shared artifact's key (what it is) and the SHA-256 of its content (checked after download).
TAG_SHARE_KEY = "quantfid.share_key"
TAG_SHARE_SHA256 = "quantfid.share_sha256"
#: Roles whose runs make up a cohort (one row per quant; the reference is the anchor).
COHORT_ROLES = (ROLE_QUANT, ROLE_REFERENCE)
#: The name the reference carries in the ``quantfid.quant_name`` tag and in every cohort table.
REFERENCE_NAME = "reference"

# ---- params: every key of these config groups, flattened with ``.``
PARAM_GROUPS = ("model", "quant", "fidelity", "bench", "direction")
PARAM_CORPUS = "fidelity.corpus"
PARAM_CONTEXT = "fidelity.context"
#: Set by the sweep, not configured: the corpus's resolved spec (JSON), its content hash (the corpus's identity, in the
#: run identity), and the precision of every log-softmax (float64 whatever the model's dtype).
PARAM_CORPUS_SOURCE = "fidelity.corpus_source"
PARAM_CORPUS_SHA256 = "fidelity.corpus_sha256"
PARAM_LOGPROB_DTYPE = "fidelity.logprob_dtype"
#: A quant whose weights come from files (an existing checkpoint): the hash of those files, in the run identity.
PARAM_QUANT_SOURCE_SHA256 = "quant.source_sha256"

# ---- metrics
FIDELITY_PREFIX = "fid."
BENCH_PREFIX = "bench."
COMPOSITE = "composite"
METRIC_BITS_PER_WEIGHT = "quant.bits_per_weight"
METRIC_MODEL_BYTES = "quant.model_bytes"
METRIC_JOB_SECONDS = "job.seconds"
#: What a quant costs to store, logged per run (the analysis draws quality against it).
QUANT_FACT_METRICS = (METRIC_BITS_PER_WEIGHT, METRIC_MODEL_BYTES)
#: What a quant costs to run, measured in the job on a fixed workload (quantfid.bench.perf): prompt tokens per second of
#: the prefill, generated tokens per second of greedy decoding with the KV cache, and the peak memory of the workload
#: (process RSS high-water mark on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). Fake-quant backends (RTN) run at
#: full-precision speed on CPU: their perf.* numbers are not deployment speeds.
PERF_PREFIX = "perf."
METRIC_PREFILL_TPS = "perf.prefill_tokens_per_s"
METRIC_DECODE_TPS = "perf.decode_tokens_per_s"
METRIC_PEAK_MEM = "perf.peak_memory_bytes"
METRIC_PERF_SECONDS = "perf.seconds"
PERF_METRICS = (METRIC_PREFILL_TPS, METRIC_DECODE_TPS, METRIC_PEAK_MEM)
#: Tag: how the peak memory was measured (``rss`` / ``cuda_max_allocated``) and the workload (prompt x new tokens).
TAG_PERF_MEMORY = "quantfid.perf.memory"
TAG_PERF_WORKLOAD = "quantfid.perf.workload"
BENCH_METRIC = re.compile(r"^bench\.(.+)\.(acc|n)$")
#: The percentiles of the per-token KLD and delta-p distributions logged as ``fid.kld_<name>`` / ``fid.dp_<name>``
#: (llama.cpp prints the same ones; imported llama.cpp logs take these names): p01 is the 1st percentile, p001 the
#: 0.1th.
KLD_PERCENTILES = {
    "p999": 99.9, "p99": 99.0, "p95": 95.0, "p90": 90.0, "p10": 10.0, "p05": 5.0, "p01": 1.0, "p001": 0.1,
}  # fmt: skip
DP_PERCENTILES = {**KLD_PERCENTILES, "p75": 75.0, "p25": 25.0}

# ---- artifacts
OUTCOMES_ARTIFACT = "outcomes/outcomes.parquet"
CONFIG_ARTIFACT = "config/resolved.yaml"
ERROR_ARTIFACT = "error.txt"
#: The outcome table again as an MLflow table (``mlflow.log_table``): the UI's artifact view shows it prompt by prompt.
OUTCOMES_TABLE_ARTIFACT = "outcomes/outcomes_table.json"
#: Columns of that table (the prompt and output text, pass/fail, per-prompt KLD).
OUTCOMES_TABLE_COLUMNS = ("task", "prompt_id", "prompt", "output", "expected", "passed", "kld_prompt", "kld_completion")
#: The sweep's parent run: one row per job run of the sweep (name, status, the quant facts, perf.* and fid/bench
#: headline metrics), CSV.
COHORT_ARTIFACT = "cohort/cohort.csv"
#: Run input contexts (``mlflow.log_input``): the fidelity corpus and the benchmark tasks a run used.
INPUT_CONTEXT_CORPUS = "fidelity_corpus"
INPUT_CONTEXT_TASK = "bench_task"

# ---- the per-prompt outcome table (``outcomes/outcomes.parquet``)
#: What the bench stage writes for every prompt, in order.
OUTCOME_COLUMNS = ("task", "prompt_id", "prompt_hash", "output", "passed", "score")
#: Further bench columns: the task's version, the prompt text (the fidelity stage needs it), expected, a detail.
EXTRA_COLUMNS = ("task_version", "prompt", "expected", "detail")
#: Per-prompt fidelity the sweep adds: mean token KLD on the prompt, and teacher-forced on the reference's output.
FIDELITY_COLUMNS = ("kld_prompt", "kld_completion")
# ---- direction-aware per-prompt columns (issue 15; docs/fidelity.md): label-free, from the reference's own output
#: Per prompt, NaN when not measured: expected net flip (KL x (1 - 2 x reference confidence)), confident
#: disagreement (1/0) and Jensen-Shannon on the reference's completion (the volume control).
DIRECTION_COLUMNS = ("dir_expected_netflip", "dir_confident_disagree", "ctl_js_refcont")
#: The logged table's leading columns (then :data:`EXTRA_COLUMNS`).
LOGGED_OUTCOME_COLUMNS = (*OUTCOME_COLUMNS, *FIDELITY_COLUMNS, *DIRECTION_COLUMNS)
#: The columns the analysis needs of a logged table (the rest of it is for people).
OUTCOME_KEY_COLUMNS = ("task", "prompt_id", "passed")


def task_key(task: str) -> str:
    """``organism/arith`` -> ``organism.arith``: metric names keep ``.`` as their only separator."""
    return task.replace("/", ".")


def bench_metric(task: str, kind: str) -> str:
    """``bench.<task>.<kind>`` for ``kind`` in ``acc``, ``n`` (``task`` may be :data:`COMPOSITE`)."""
    return f"{BENCH_PREFIX}{task_key(task)}.{kind}"


def bench_metrics(outcomes: pd.DataFrame) -> dict[str, float]:
    """``bench.<task>.acc`` / ``.n`` per task and ``bench.composite.acc`` / ``.n`` (mean over all prompts)."""
    metrics: dict[str, float] = {}
    for task, group in outcomes.groupby("task", sort=True):
        metrics[bench_metric(str(task), "acc")] = float(group["passed"].mean())
        metrics[bench_metric(str(task), "n")] = float(len(group))
    if len(outcomes):
        metrics[bench_metric(COMPOSITE, "acc")] = float(outcomes["passed"].mean())
        metrics[bench_metric(COMPOSITE, "n")] = float(len(outcomes))
    return metrics


def conform_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The logged column set, order and dtypes; a stage that did not measure a column leaves it NaN, never invents
    it. Raises ``ValueError`` when a bench column is missing."""
    df = outcomes.copy()
    if "score" not in df:
        df["score"] = df["passed"].astype(float)
    for col in (*FIDELITY_COLUMNS, *DIRECTION_COLUMNS):
        if col not in df:
            df[col] = math.nan
    missing = [c for c in LOGGED_OUTCOME_COLUMNS if c not in df]
    if missing:
        raise ValueError(f"outcome table lacks columns {missing}; the bench stage must provide {list(OUTCOME_COLUMNS)}")
    df = df[[*LOGGED_OUTCOME_COLUMNS, *(c for c in df.columns if c not in LOGGED_OUTCOME_COLUMNS)]]
    df["passed"] = df["passed"].astype(bool)
    df["score"] = df["score"].astype(float)
    return df.reset_index(drop=True)


def run_name(quant_name: str, corpus: str | None = None, context: int | None = None) -> str:
    """``rtn_w4_g64@code.256``: the quant and its fidelity setting, readable in the MLflow runs table."""
    return f"{quant_name}@{corpus}.{context}" if corpus is not None else quant_name
