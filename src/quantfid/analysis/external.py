"""Import cohorts measured elsewhere, so teams can analyse results they already have.

Sources, combinable:

- a cohort CSV: columns ``quant``, ``score`` (accuracy in [0, 1]), ``n`` (prompts scored; needed by the
  ``ci_overlap`` silent zone), optional ``task`` (then one row per quant and task), and any other numeric column is a
  fidelity metric (e.g. ``kld_mean``, ``ppl_ratio``). One row must be the reference (``--reference``, default
  ``reference``).
- llama.cpp ``llama-perplexity --kl-divergence`` output logs, one per quant (named by the file stem or ``NAME=PATH``):
  the final "Perplexity / KL divergence / Token probability statistics" blocks become fidelity metrics named as in the
  tracking schema (percentages become fractions).
- lm-evaluation-harness ``--log_samples`` output, one directory per model (``NAME=DIR``; the reference among them):
  ``samples_<task>_<date>.jsonl`` files give per-prompt outcomes, so the McNemar silent zone and volume/direction
  work. lm-eval has no per-prompt KLD: failure prediction and the router are then skipped, and the report says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE, N_PREFIX, SCORE_PREFIX, AnalysisInputError, Cohort
from quantfid.api.schema import DP_PERCENTILES, METRIC_BITS_PER_WEIGHT, METRIC_MODEL_BYTES

# ---------------------------------------------------------------- llama.cpp --kl-divergence logs

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_PM = rf"{_NUM}\s*(?:±|\+/-)\s*{_NUM}"
_LINES: list[tuple[str, str, tuple[str, ...], float]] = [
    # (regex after the label, kind, metric names (value, se), scale)
    (rf"^Mean PPL\(Q\)\s*:\s*{_PM}", "pm", ("ppl_quant", "ppl_quant_se"), 1.0),
    (rf"^Mean PPL\(base\)\s*:\s*{_PM}", "pm", ("ppl_base", "ppl_base_se"), 1.0),
    (rf"^Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\)\s*:\s*{_NUM}\s*%", "v", ("ln_ppl_cor",), 0.01),
    (rf"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_PM}", "pm", ("ln_ppl_ratio", "ln_ppl_ratio_se"), 1.0),
    (rf"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*{_PM}", "pm", ("ppl_ratio", "ppl_ratio_se"), 1.0),
    (rf"^Mean PPL\(Q\)-PPL\(base\)\s*:\s*{_PM}", "pm", ("ppl_diff", "ppl_diff_se"), 1.0),
    (rf"^Mean\s+KLD\s*:\s*{_PM}", "pm", ("kld_mean", "kld_mean_se"), 1.0),
    (rf"^Mean\s+Δp\s*:\s*{_PM}\s*%", "pm", ("dp_mean", "dp_mean_se"), 0.01),
    (rf"^RMS Δp\s*:\s*{_PM}\s*%", "pm", ("rms_dp", "rms_dp_se"), 0.01),
    (rf"^Same top p\s*:\s*{_PM}\s*%", "pm", ("top1_agree", "top1_agree_se"), 0.01),
]
_QUANTILE = re.compile(rf"^(Maximum|Minimum|Median|[\d.]+%)\s+(KLD|Δp)\s*:\s*{_NUM}\s*(%?)")
_QNAME = {"Maximum": "max", "Minimum": "min", "Median": "median"}
# llama.cpp's percentile lines -> the native names (quantfid.api.schema), so an imported and a native cohort mean the
# same thing by the same name: p01 is the 1st percentile, p001 the 0.1th.
PERCENTILE_NAMES = {pct: name for name, pct in DP_PERCENTILES.items()}


def percentile_name(label: str) -> str:
    """'0.1%' -> 'p001', '1.0%' -> 'p01', '99.9%' -> 'p999' (native naming); an unknown percentile keeps its digits
    with the point as 'd' ('12.5%' -> 'p12d5') so it can never collide with a native name."""
    pct = float(label.rstrip("%"))
    for known, name in PERCENTILE_NAMES.items():
        if abs(pct - known) < 1e-9:
            return name
    return "p" + f"{pct:g}".replace(".", "d")


def parse_kld_log(text: str, source: str = "<log>") -> dict[str, float]:
    """Fidelity metrics from a llama-perplexity --kl-divergence log (the last occurrence of each line wins)."""
    out: dict[str, float] = {}
    compiled = [(re.compile(rx), kind, names, scale) for rx, kind, names, scale in _LINES]
    for raw in text.splitlines():
        line = raw.strip()
        m = _QUANTILE.match(line)
        if m:
            label, what, val, _pct = m.groups()
            q = _QNAME.get(label) or percentile_name(label)
            name = ("kld_" if what == "KLD" else "dp_") + q
            out[name] = float(val) * (0.01 if what == "Δp" else 1.0)
            continue
        for rx, _kind, names, scale in compiled:
            m = rx.match(line)
            if m:
                for n, v in zip(names, m.groups(), strict=False):
                    out[n] = float(v) * scale
                break
    if "kld_mean" not in out:
        raise AnalysisInputError(
            f"{source}: no 'Mean    KLD:' line found; is this the output of llama-perplexity --kl-divergence "
            "(with --kl-divergence-base)? Pass the complete log"
        )
    return out


def _named_paths(items: list[str], what: str) -> list[tuple[str, Path]]:
    """'NAME=PATH' or 'PATH' (name = file stem) arguments, checked to exist."""
    out = []
    for it in items:
        name, _, p = it.partition("=") if "=" in it else (None, None, it)
        path = Path(p)
        if not path.exists():
            raise AnalysisInputError(f"{what}: {path} does not exist (argument {it!r})")
        out.append((name or path.stem, path))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise AnalysisInputError(f"{what}: quant names repeat ({names}); use NAME=PATH to name them uniquely")
    return out


# ---------------------------------------------------------------- lm-eval --log_samples

_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d\-.:]+)\.jsonl$")
PREFERRED_METRICS = ("acc", "exact_match", "pass@1", "pass_at_1", "acc_norm", "em")


def read_lm_eval_samples(directory: Path, metric: str | None = None, name: str = "") -> pd.DataFrame:
    """Per-prompt outcomes (task, prompt_id, passed) from one model's lm-eval --log_samples directory.

    The newest samples file per task is used; of several filters, the first in the file; passed = metric >= 0.5.
    """
    files = [p for p in sorted(Path(directory).rglob("samples_*.jsonl")) if _SAMPLES.match(p.name)]
    if not files:
        raise AnalysisInputError(
            f"{name}: no samples_<task>_<date>.jsonl in {directory}; run lm_eval with --log_samples --output_path"
        )
    newest: dict[str, Path] = {}
    for p in files:
        m = _SAMPLES.match(p.name)
        t = m["task"]
        if t not in newest or m["date"] > _SAMPLES.match(newest[t].name)["date"]:
            newest[t] = p
    frames = []
    for task, path in sorted(newest.items()):
        rows, filt, used = [], None, None
        for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnalysisInputError(f"{path}:{ln}: not valid JSON ({e})") from e
            filt = s.get("filter") if filt is None else filt
            if s.get("filter") != filt:
                continue
            if used is None:
                cands = [metric] if metric else [*PREFERRED_METRICS, *s.get("metrics", [])]
                used = next((c for c in cands if c in s), None)
                if used is None:
                    raise AnalysisInputError(
                        f"{path}: metric {metric!r} not in the samples (keys: "
                        f"{s.get('metrics')}); pick one with --lm-eval-metric"
                    )
            if "doc_id" not in s or used not in s:
                raise AnalysisInputError(f"{path}:{ln}: sample lacks 'doc_id' or {used!r}")
            rows.append((str(s["doc_id"]), float(s[used]) >= 0.5))
        f = pd.DataFrame(rows, columns=["prompt_id", "passed"])
        f.insert(0, "task", task.replace("/", "."))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- assembling a cohort


CSV_FACTS = {"bits_per_weight": METRIC_BITS_PER_WEIGHT, "model_bytes": METRIC_MODEL_BYTES}


def _read_csv(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics per quant, scores per quant and task) from a cohort CSV."""
    df = pd.read_csv(path)
    if "quant" not in df.columns:
        raise AnalysisInputError(f"{path}: required column 'quant' missing (columns: {list(df.columns)})")
    df["quant"] = df["quant"].astype(str)
    if "task" not in df.columns:
        df["task"] = COMPOSITE
    facts = [c for c in CSV_FACTS if c in df.columns]
    metric_cols = [c for c in df.columns if c not in ("quant", "task", "score", "n", *CSV_FACTS)]
    for c in metric_cols:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise AnalysisInputError(
                f"{path}: column {c!r} is not numeric (first values {df[c].head(3).tolist()}); "
                "every column besides quant/task is a number"
            )
    metrics = df.groupby("quant")[metric_cols].first() if metric_cols else pd.DataFrame(index=df["quant"].unique())
    for c in facts:  # quant size, not fidelity: carried under the tracking schema's metric names
        metrics[CSV_FACTS[c]] = pd.to_numeric(df.groupby("quant")[c].first(), errors="coerce")
    scores = pd.DataFrame()
    if "score" in df.columns:
        s = pd.to_numeric(df["score"], errors="coerce")
        bad = df.loc[s.isna() | (s < 0) | (s > 1), "quant"].tolist()
        if bad:
            raise AnalysisInputError(f"{path}: column 'score' must be an accuracy in [0, 1]; bad rows for {bad[:5]}")
        if df.duplicated(["quant", "task"]).any():
            raise AnalysisInputError(f"{path}: (quant, task) rows repeat; one row per quant (and task)")
        scores = df[["quant", "task", "score"] + (["n"] if "n" in df.columns else [])]
    return metrics, scores


def _scores_from_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    g = outcomes.groupby(["quant", "task"])["passed"]
    return pd.DataFrame({"score": g.mean(), "n": g.size()}).reset_index()


def import_external(
    csv: str | Path | None = None,
    kld_logs: list[str] | None = None,
    lm_eval: list[str] | None = None,
    reference: str = "reference",
    lm_eval_metric: str | None = None,
) -> Cohort:
    """Build a ``Cohort`` from external files (see the module docstring for the formats)."""
    if csv is None and not kld_logs and not lm_eval:
        raise AnalysisInputError("no external input: give --csv, --kld-log and/or --lm-eval-samples")
    metrics = pd.DataFrame()
    scores = pd.DataFrame()
    files: dict[str, list[str]] = {}
    if csv is not None:
        if not Path(csv).exists():
            raise AnalysisInputError(f"--csv: {csv} does not exist")
        metrics, scores = _read_csv(Path(csv))
        files["csv"] = [str(csv)]
    if kld_logs:
        parsed = {n: parse_kld_log(p.read_text(encoding="utf-8", errors="replace"), str(p))
                  for n, p in _named_paths(kld_logs, "--kld-log")}  # fmt: skip
        logs = pd.DataFrame.from_dict(parsed, orient="index")
        metrics = logs.combine_first(metrics) if len(metrics.columns) else logs
        files["kld_logs"] = list(kld_logs)
    outcomes = None
    if lm_eval:
        frames = []
        for name, d in _named_paths(lm_eval, "--lm-eval-samples"):
            f = read_lm_eval_samples(d, lm_eval_metric, name)
            f.insert(0, "quant", name)
            frames.append(f)
        outcomes = pd.concat(frames, ignore_index=True)
        scores = _scores_from_outcomes(outcomes)  # per-prompt outcomes are the ground truth for the score
        files["lm_eval"] = list(lm_eval)
    if scores.empty:
        raise AnalysisInputError("no benchmark score: give a 'score' column in --csv or lm-eval samples")
    variants = sorted(c for c in metrics.columns if metrics[c].notna().any() and c not in CSV_FACTS.values())
    if not variants:
        raise AnalysisInputError("no fidelity metric: add metric columns to --csv or give --kld-log files")
    names = sorted(set(scores["quant"]) | set(metrics.index))
    if reference not in names:
        raise AnalysisInputError(
            f"reference {reference!r} not among the quants {names[:10]}; add the reference's row (its score; "
            "fidelity may be empty) or name it with --reference"
        )
    no_score = sorted(set(metrics.index) - set(scores["quant"]))
    if no_score:
        raise AnalysisInputError(f"quant(s) {no_score[:5]} have fidelity metrics but no score; add their scores")
    table = pd.DataFrame(index=pd.Index(names, name="quant"))
    table = table.join(metrics[variants + [c for c in CSV_FACTS.values() if c in metrics.columns]])
    tasks = sorted(t for t in scores["task"].unique() if t != COMPOSITE)
    for t in tasks:
        st = scores[scores["task"] == t].set_index("quant")
        table[SCORE_PREFIX + t] = st["score"]
        if "n" in st:
            table[N_PREFIX + t] = st["n"]
    if (scores["task"] == COMPOSITE).any():
        st = scores[scores["task"] == COMPOSITE].set_index("quant")
        table[SCORE_PREFIX + COMPOSITE] = st["score"]
        if "n" in st:
            table[N_PREFIX + COMPOSITE] = st["n"]
    else:  # prompt-weighted mean over tasks, as bench.composite.acc is defined
        has_n = "n" in scores.columns
        w = scores.assign(w=scores["n"] if has_n else 1.0)
        comp = w.groupby("quant").apply(lambda g: np.average(g["score"], weights=g["w"]), include_groups=False)
        table[SCORE_PREFIX + COMPOSITE] = comp
        if has_n:
            table[N_PREFIX + COMPOSITE] = w.groupby("quant")["w"].sum()
    missing = table[SCORE_PREFIX + COMPOSITE].isna()
    if missing.any():
        raise AnalysisInputError(f"quant(s) {list(table.index[missing])[:5]} have no score")
    source = {"kind": "external", **files, "reference": reference}
    return Cohort(table, variants, tasks, reference, outcomes, source)
