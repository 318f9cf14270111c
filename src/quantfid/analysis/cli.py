"""``quantfid-analyze``: read a cohort (tracking store or external files), analyse it, write report.html +
summary.json, and log both to an MLflow analysis run (``quantfid.role=analysis``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quantfid.analysis.analyze import AnalysisConfig, AnalysisResult, analyze
from quantfid.analysis.cohort import COMPOSITE, SCORE_PREFIX, AnalysisInputError, Cohort
from quantfid.analysis.equivalence import DEFAULT_DELTA, SCOPES
from quantfid.analysis.extended import DEFAULT_RELIABILITY_SPLITS
from quantfid.analysis.external import import_external
from quantfid.analysis.query import load_cohort
from quantfid.analysis.report import write_report
from quantfid.analysis.silent import METHODS, SilentZoneConfig
from quantfid.analysis.stats import CORRECTIONS
from quantfid.analysis.variants import DEFAULT_PRIMARY
from quantfid.api import schema as S

EPILOG = """examples:
  quantfid-analyze --tracking-uri sqlite:///mlflow.db --experiment quantfid --sweep-id organism-2026 --out report/
  quantfid-analyze --csv cohort.csv --no-log --out report/
  quantfid-analyze --kld-log q4_k_m=q4km.log --kld-log q8_0=q8.log --csv scores.csv --silent-zone delta --band 0.01
  quantfid-analyze --lm-eval-samples reference=out/ref --lm-eval-samples nf4=out/nf4 --csv fidelity.csv
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantfid-analyze",
        description="Analyse a quant cohort: fidelity-vs-score correlations over the full cohort and the silent zone, "
        "per-prompt failure prediction, KLD router, volume vs direction of flips. Reads only the tracking store "
        "(or external files) and writes a self-contained report.html and summary.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source: the MLflow tracking store (schema docs/schema.md)")
    src.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI / mlflow's default)")
    src.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    src.add_argument("--sweep-id", action="append", default=[], help="quantfid.sweep_id to select (repeatable)")
    src.add_argument("--filter", help="extra MLflow filter string, ANDed (e.g. \"params.`quant.bits` = '4'\")")
    src.add_argument("--workers", type=int, default=16, help="parallel artifact reads (default 16)")
    src.add_argument("--truth-experiment",
                     help="experiment of the ground-truth preset (experiment=organism_truth) in the same store: its "
                          "composite scores are the near-noise-free target of direction_vs_kld")  # fmt: skip
    ext = p.add_argument_group("source: external cohort files (instead of the tracking store)")
    ext.add_argument("--csv", help="cohort CSV: quant, score, n, [task], fidelity metric columns")
    ext.add_argument(
        "--kld-log",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="llama-perplexity --kl-divergence output log of one quant (repeatable)",
    )
    ext.add_argument(
        "--lm-eval-samples",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="lm-eval --log_samples output directory of one model, the reference included (repeatable)",
    )
    ext.add_argument("--lm-eval-metric", help="per-sample metric to read as pass/fail (default: acc, exact_match, ...)")
    ext.add_argument("--reference", default="reference", help="name of the reference row (default 'reference')")
    an = p.add_argument_group("analysis")
    an.add_argument(
        "--silent-zone",
        choices=METHODS,
        default="auto",
        help="silent-zone definition: equivalence (the default: the paired CI of the accuracy difference lies "
        "inside +-delta; unpaired CIs without per-prompt outcomes), mcnemar (the paper's zone: paired exact test per "
        "task, corrected; always reported beside the default as zone 'paper'), ci_overlap (Wilson CIs overlap), "
        "delta (|score change| <= --band)",
    )
    an.add_argument("--delta", type=float, default=DEFAULT_DELTA,
                    help=f"equivalence margin in accuracy (absolute; default {DEFAULT_DELTA}: two points)")
    an.add_argument("--equivalence-scope", choices=SCOPES, default="all",
                    help="equivalent on the composite and every task (all, default) or on the composite only")
    an.add_argument("--correction", choices=sorted(CORRECTIONS), default="holm", help="multiple-comparison correction")
    an.add_argument(
        "--correction-scope",
        choices=("all", "task"),
        default="all",
        help="correct over all quant x task tests (default) or within each task",
    )
    an.add_argument("--alpha", type=float, default=0.05, help="significance level of the silent-zone test")
    an.add_argument("--band", type=float, default=0.02, help="score band of --silent-zone delta")
    an.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for rho CIs (0: none)")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--level", type=float, default=0.95, help="confidence level")
    an.add_argument(
        "--kld-column",
        choices=("kld_completion", "kld_prompt"),
        default="kld_completion",
        help="per-prompt KLD for failure prediction and the router",
    )
    an.add_argument("--max-router-pairs", type=int, default=2000, help="router pairs (seeded sample beyond this)")
    an.add_argument(
        "--variants",
        default="all",
        help="fidelity variants: all (every fid.* stat x setting but standard errors), paper14, or a "
        "comma list of names / bare stats (default all)",
    )
    an.add_argument("--primary-variant",
                    help=f"the variant the answer and plots are about (default {DEFAULT_PRIMARY}; if the cohort lacks "
                    "it: kld_mean, else the first mean-KLD variant, noted in the report)")
    an.add_argument("--reliability-splits", type=int, default=DEFAULT_RELIABILITY_SPLITS,
                    help="seeded split-halves of the prompts for the noise ceiling (default %(default)s)")
    an.add_argument("--crossfit-splits", type=int, default=10,
                    help="seeded split-halves for cross-fitting the zone (x2 folds; default %(default)s)")
    an.add_argument("--power", type=float, default=0.8, help="power for the planning numbers (default 0.8)")
    an.add_argument("--max-clogit-cells", type=int, default=3000,
                    help="quant x prompt cells for the conditional logistic regression (quants subsampled above)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="analysis-report", help="output directory (default ./analysis-report)")
    out.add_argument("--no-log", action="store_true", help="do not log an MLflow analysis run")
    out.add_argument("--log-tracking-uri", help="where to log the analysis run (default: --tracking-uri)")
    out.add_argument(
        "--log-experiment",
        help="experiment of the analysis run (default: the first --experiment, else 'quantfid-analysis')",
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_from_args(args: argparse.Namespace) -> Cohort:
    """The cohort the arguments name: external files, or the tracking store."""
    external = args.csv or args.kld_log or args.lm_eval_samples
    if external and args.experiment:
        raise AnalysisInputError(
            "give either --experiment (tracking store) or external files (--csv/--kld-log/--lm-eval-samples), not both"
        )
    if external:
        return import_external(args.csv, args.kld_log, args.lm_eval_samples, args.reference, args.lm_eval_metric)
    if not args.experiment:
        raise AnalysisInputError("no source: give --experiment NAME (with --tracking-uri) or external files (--csv)")
    return load_cohort(args.tracking_uri, args.experiment, args.sweep_id or None, args.filter,
                       max_workers=args.workers, progress=not args.no_progress)  # fmt: skip


def truth_scores(args: argparse.Namespace):
    """Composite score per quant name from the ground-truth experiment (None without ``--truth-experiment``)."""
    if not args.truth_experiment:
        return None
    truth = load_cohort(args.tracking_uri, [args.truth_experiment], with_outcomes=False,
                        progress=not args.no_progress)  # fmt: skip
    return truth.table[SCORE_PREFIX + COMPOSITE]


def log_analysis_run(res: AnalysisResult, paths: dict[str, Path], tracking_uri: str | None, experiment: str) -> str:
    """Log report, summary and plots as artifacts of a new FINISHED run tagged quantfid.role=analysis."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    s = res.summary
    src = s["source"]
    tags = {S.TAG_ROLE: S.ROLE_ANALYSIS, S.TAG_SCHEMA: S.SCHEMA_VERSION,
            "quantfid.analysis.source": src.get("kind", "?"),
            "quantfid.analysis.sweep_ids": ",".join(src.get("sweep_ids", []))[:5000],
            "quantfid.analysis.silent_zone": s["silent_zone"]["method"]}  # fmt: skip
    if src.get("reference_fingerprint"):
        tags[S.TAG_REFERENCE] = src["reference_fingerprint"]
    run = client.create_run(exp_id, tags=tags, run_name="quantfid-analyze")
    rid = run.info.run_id
    try:
        metrics = {"n_quants": s["silent_zone"]["n_full"], "n_silent": s["silent_zone"]["n_silent"]}
        for r in s["correlations"]:
            if r["variant"] == res.primary_variant and r["target"].endswith(COMPOSITE) and r["rho"] is not None:
                metrics[f"rho.{r['zone']}.{r['target']}"] = r["rho"]
        if s["router"]:
            metrics["router.accuracy"] = s["router"]["accuracy"]["value"]
            metrics["router.accuracy_ci_low"] = s["router"]["accuracy_prompt_bootstrap"]["ci_low"]
            metrics["router.accuracy_ci_high"] = s["router"]["accuracy_prompt_bootstrap"]["ci_high"]
        if s["failure_prediction"] and s["failure_prediction"]["cohort"]["gm_ratio"]["value"] is not None:
            metrics["failure.gm_ratio"] = s["failure_prediction"]["cohort"]["gm_ratio"]["value"]
        metrics.update(extra_metrics(res))
        finite = {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # NaN != NaN
        client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in finite.items()], params=[])
        client.log_param(rid, "primary_variant", res.primary_variant)
        client.log_artifact(rid, str(paths["report"]))
        client.log_artifact(rid, str(paths["summary"]))
        for k, pth in paths.items():
            if k not in ("report", "summary"):
                client.log_artifact(rid, str(pth), artifact_path="plots")
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def extra_metrics(res: AnalysisResult) -> dict[str, float | None]:
    """Headline metrics added with the equivalence zone (names new in issue 12; the older ones are unchanged)."""
    s = res.summary
    out: dict[str, float | None] = {}
    eq = s.get("equivalence")
    if eq:
        for v, k in eq["counts"].items():
            out[f"equivalence.n_{v}"] = k
        out["equivalence.delta"] = eq["delta"]
    if s.get("paper_zone"):
        out["n_silent_paper"] = s["paper_zone"]["n_silent"]
    for r in s["correlations"]:
        if r["variant"] == res.primary_variant and r["target"] == f"score.{COMPOSITE}":
            out[f"noise_ceiling.{r['zone']}.score.{COMPOSITE}"] = r.get("noise_ceiling")
            if r.get("rho_cf") is not None:
                out[f"rho_cf.{r['zone']}.score.{COMPOSITE}"] = r["rho_cf"]
    fc = s.get("failure_controls")
    if fc:
        out["failure.gm_ratio_ref_difficulty"] = fc["cohort"]["gm_ratio_ref_difficulty"]["value"]
        out["failure.within_prompt_centred"] = fc["cohort"]["within_prompt"]["loss_centred"]["value"]
    rb = s.get("router_baselines")
    if rb:
        e = rb["groups"]["all"]["all prompts"]
        out["router.global_kld"] = e["global_kld"]["value"]
        out["router.demeaned"] = e["demeaned"]["value"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = AnalysisConfig(
            silent=SilentZoneConfig(args.silent_zone, args.correction, args.alpha, args.correction_scope, args.band,
                                    args.level, args.delta, args.equivalence_scope),
            n_boot=args.n_boot, seed=args.seed, level=args.level, kld_column=args.kld_column,
            max_router_pairs=args.max_router_pairs, primary_variant=args.primary_variant, variants=args.variants,
            progress=not args.no_progress, reliability_splits=args.reliability_splits,
            crossfit_splits=args.crossfit_splits, power=args.power, max_clogit_cells=args.max_clogit_cells,
        )  # fmt: skip
        cohort = load_from_args(args)
        res = analyze(cohort, cfg, truth_scores(args))
    except AnalysisInputError as e:
        print(f"quantfid-analyze: error: {e}", file=sys.stderr)
        return 2
    paths = write_report(res, args.out)
    sz = res.summary["silent_zone"]
    print(f"cohort: {sz['n_full']} quants; silent zone ({sz['method']}): {sz['n_silent']}; outside: {sz['n_outside']}")
    eq = res.summary.get("equivalence")
    if eq:
        c = eq["counts"]
        print(f"equivalence at +-{eq['delta']} ({eq['scope']}, {'paired' if eq['paired'] else 'unpaired'} CIs): "
              f"{c['equivalent']} equivalent, {c['different']} different, {c['indeterminate']} indeterminate")
    print(f"report:  {paths['report'].resolve()}")
    print(f"summary: {paths['summary'].resolve()}")
    if not args.no_log:
        log_uri = args.log_tracking_uri or args.tracking_uri
        experiment = args.log_experiment or (args.experiment[0] if args.experiment else "quantfid-analysis")
        rid = log_analysis_run(res, paths, log_uri, experiment)
        print(
            f"mlflow analysis run: {rid} (experiment {experiment!r}); open with: mlflow ui --backend-store-uri "
            f"{log_uri or '<your tracking uri>'}"
        )
    print(json.dumps({"n_silent": sz["n_silent"], "n_full": sz["n_full"], "elapsed_s": res.summary["elapsed_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
