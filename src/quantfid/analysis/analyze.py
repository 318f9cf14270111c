"""Run every analysis on a ``Cohort`` and collect the numbers into one summary (the source of summary.json)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE, SCORE_PREFIX, AnalysisInputError, Cohort
from quantfid.analysis.direction import direction_table
from quantfid.analysis.direction_vs_kld import direction_vs_kld
from quantfid.analysis.equivalence import groups
from quantfid.analysis.extended import DEFAULT_RELIABILITY_SPLITS, extended_analysis
from quantfid.analysis.failure import failure_prediction
from quantfid.analysis.flips import direction_identity_error, volume_direction
from quantfid.analysis.router import router_accuracy
from quantfid.analysis.silent import SilentZoneConfig, silent_zone
from quantfid.analysis.stats import _clean, records, spearman_table, table_records
from quantfid.analysis.variants import bh_over_families, resolve_primary, variant_families
from quantfid.api.variants import PAPER_VARIANT_NAMES

SUMMARY_VERSION = 1
ZONES = ("full", "silent", "paper")


@dataclass(frozen=True)
class AnalysisConfig:
    """Every knob of the analysis; written verbatim into summary.json so a number can be traced to its settings."""

    silent: SilentZoneConfig = field(default_factory=SilentZoneConfig)
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    kld_column: str = "kld_completion"
    max_router_pairs: int = 2000
    primary_variant: str | None = None  # None: DEFAULT_PRIMARY (kld_mean@code.256), with a noted fallback
    variants: str = "all"
    progress: bool = True
    reliability_splits: int = DEFAULT_RELIABILITY_SPLITS
    crossfit_splits: int = 10
    power: float = 0.8
    max_clogit_cells: int = 3000
    trust_ceiling: float = 0.5  # below this noise ceiling the benchmark cannot rank the quants: "cannot tell"
    trust_rho: float = 0.5  # |rho| / ceiling at or above this: the variant ranks the quants

    def __post_init__(self) -> None:
        if self.n_boot < 0:
            raise AnalysisInputError(f"n_boot={self.n_boot} must be >= 0 (0 disables bootstrap CIs)")
        if not 0 < self.level < 1:
            raise AnalysisInputError(f"level={self.level} must lie in (0, 1), e.g. 0.95")
        if self.kld_column not in ("kld_completion", "kld_prompt"):
            raise AnalysisInputError(f"kld_column={self.kld_column!r} must be 'kld_completion' or 'kld_prompt'")
        if self.max_router_pairs < 1:
            raise AnalysisInputError(f"max_router_pairs={self.max_router_pairs} must be >= 1")
        if self.reliability_splits < 2 or self.crossfit_splits < 1:
            raise AnalysisInputError(
                f"reliability_splits={self.reliability_splits} must be >= 2 and crossfit_splits="
                f"{self.crossfit_splits} >= 1"
            )
        if not 0 < self.power < 1:
            raise AnalysisInputError(f"power={self.power} must lie in (0, 1), e.g. 0.8")


@dataclass
class AnalysisResult:
    """The summary (JSON-ready) plus the frames the report plots."""

    summary: dict
    table: pd.DataFrame
    zone: pd.DataFrame
    flips: pd.DataFrame | None
    failure: dict | None
    correlations: pd.DataFrame
    primary_variant: str
    equivalence: pd.DataFrame | None = None
    direction: pd.DataFrame | None = None
    paper_zone: pd.DataFrame | None = None


def pick_primary_variant(cohort: Cohort, requested: str | None) -> str:
    """The primary variant: the requested one (must exist), else DEFAULT_PRIMARY (``kld_mean@code.256``), else the bare
    ``kld_mean``, else the first mean-KLD variant, else the first (see quantfid.analysis.variants)."""
    if requested is not None and requested not in cohort.variants:
        raise AnalysisInputError(
            f"primary variant {requested!r} is not in the cohort; variants are {cohort.variants[:20]}"
        )
    return resolve_primary(cohort.variants, requested)[0]


PAPER14 = PAPER_VARIANT_NAMES  # the paper's 14 (their one home: quantfid.api.variants)


# Logged beside the fidelity statistics but describing the measurement or the reference, not the quant's fidelity.
NOT_FIDELITY = frozenset({"n_tokens", "ppl_ref", "ppl_base"})


def select_variants(available: list[str], spec: str) -> list[str]:
    """Which fidelity variants to analyse.

    ``all``: every variant except standard errors (``*_se``: uncertainty of a statistic, not a fidelity measure) and
    bookkeeping (``n_tokens``, ``ppl_ref``/``ppl_base``: the same for every quant);
    ``paper14``: the paper's 14 (all must be present); else a comma-separated list of variant names, where a bare
    statistic (``kld_mean``) selects it at every measured setting.
    """
    if spec == "all":
        return [v for v in available if not v.split("@")[0].endswith("_se") and v.split("@")[0] not in NOT_FIDELITY]
    wanted = list(PAPER14) if spec == "paper14" else [w.strip() for w in spec.split(",") if w.strip()]
    out, missing = [], []
    for w in wanted:
        hit = [v for v in available if v == w or ("@" not in w and v.split("@")[0] == w)]
        (out.extend(hit) if hit else missing.append(w))
    if missing or not out:
        raise AnalysisInputError(
            f"variants {missing or wanted} are not in the cohort (spec {spec!r}); available: {available[:30]}"
        )
    return list(dict.fromkeys(out))


def analyze(cohort: Cohort, config: AnalysisConfig | None = None, truth: pd.Series | None = None) -> AnalysisResult:
    """Silent zone (equivalence, and the paper's McNemar zone), correlations with noise ceilings and cross-fitting,
    volume/direction/balance, failure prediction with its controls, router with its baselines, and the pre-registered
    direction-aware metrics vs KLD comparison (``truth``: quant -> composite score on the ground-truth draw)."""
    config = config or AnalysisConfig()
    t0 = time.perf_counter()
    chosen = select_variants(cohort.variants, config.variants)
    if chosen != cohort.variants:
        cohort = Cohort(cohort.table, chosen, cohort.tasks, cohort.reference, cohort.outcomes, cohort.source)
    order = list(cohort.table.index)
    quants = cohort.quants
    notes: list[str] = []
    primary = pick_primary_variant(cohort, config.primary_variant)
    primary_note = resolve_primary(cohort.variants, config.primary_variant)[1]
    if primary_note:
        notes.append(primary_note)
    kld_col = config.kld_column if config.kld_column in cohort.kld_columns() else None
    if cohort.has_outcomes and kld_col is None and cohort.kld_columns():
        kld_col = cohort.kld_columns()[0]
        notes.append(f"per-prompt KLD column {config.kld_column!r} is empty; used {kld_col!r} instead")
    matrices = cohort.task_matrices(kld_column=kld_col) if cohort.has_outcomes else None

    zone, method = silent_zone(cohort, config.silent, matrices)
    silent_q = [q for q in quants if bool(zone.at[q, "silent"])]
    zone_members = {"full": quants, "silent": silent_q}
    zone_methods = {"silent": method}
    paper = None
    if matrices is not None and method != "mcnemar":  # the paper-style zone, always beside the configured one
        paper, _ = silent_zone(cohort, replace(config.silent, method="mcnemar"), matrices)
        zone_members["paper"] = [q for q in quants if bool(paper.at[q, "silent"])]
        zone_methods["paper"] = "mcnemar"
    equiv = zone if method == "equivalence" else None
    if equiv is None:
        try:
            equiv, _ = silent_zone(cohort, replace(config.silent, method="equivalence"), matrices)
        except AnalysisInputError as e:
            notes.append(f"equivalence verdicts not computed: {e}")

    flips = None
    identity_err = None
    direction = None
    if matrices is not None:
        flips = volume_direction(quants, order, matrices)
        identity_err = direction_identity_error(flips, matrices)
        direction = direction_table(quants, order, matrices, config.level)

    # ---- correlations: every variant x every target, over every zone
    targets: dict[str, np.ndarray] = {}
    task_keys = [*cohort.tasks, COMPOSITE] if cohort.tasks else [COMPOSITE]
    for k in task_keys:
        targets[f"score.{k}"] = cohort.table.loc[quants, SCORE_PREFIX + k].to_numpy(float)
    if flips is not None:
        for kind in ("volume", "direction", "balance"):
            for k in [COMPOSITE, *sorted(matrices)]:
                src = direction if kind == "balance" else flips
                targets[f"{kind}.{k}"] = src.loc[quants, f"{kind}.{k}"].to_numpy(float)
    rows = []
    pos = {q: i for i, q in enumerate(quants)}
    for zname, members in zone_members.items():
        sel = np.array([pos[q] for q in members], dtype=np.int64)
        xv = cohort.table.loc[members, cohort.variants].to_numpy(float)
        xs = {v: xv[:, i] for i, v in enumerate(cohort.variants)}
        ys = {k: v[sel] for k, v in targets.items()}
        complete_x = {k: v for k, v in xs.items() if np.isfinite(v).all()}
        complete_y = {k: v for k, v in ys.items() if np.isfinite(v).all()}
        part = spearman_table(complete_x, complete_y, config.n_boot, config.seed, config.level) if complete_x else []
        # pairs with missing values (e.g. balance of a quant without flips): their own resample on the complete
        # quants, batched over the pairs that share the same complete quants (same result as one pair at a time)
        by_mask: dict[bytes, tuple[np.ndarray, list[tuple[str, str]]]] = {}
        for xk, xv in xs.items():
            for yk, yv in ys.items():
                if xk in complete_x and yk in complete_y:
                    continue
                ok = np.isfinite(xv) & np.isfinite(yv)
                by_mask.setdefault(ok.tobytes(), (ok, []))[1].append((xk, yk))
        for ok, pairs in by_mask.values():
            want = set(pairs)
            sub_x = {xk: xs[xk][ok] for xk in dict.fromkeys(p[0] for p in pairs)}
            sub_y = {yk: ys[yk][ok] for yk in dict.fromkeys(p[1] for p in pairs)}
            part.extend(r for r in spearman_table(sub_x, sub_y, config.n_boot, config.seed, config.level)
                        if (r["x"], r["y"]) in want)  # fmt: skip
        for r in part:
            rows.append({"zone": zname, "variant": r.pop("x"), "target": r.pop("y"), **r})
    corr = pd.DataFrame(rows, columns=["zone", "variant", "target", "value", "ci_low", "ci_high", "p", "n"])
    corr = corr.rename(columns={"value": "rho"})
    for col in ("rho", "ci_low", "ci_high", "p"):  # None (undefined) -> NaN: numeric columns stay numeric
        corr[col] = pd.to_numeric(corr[col], errors="coerce").astype(float)
    families = variant_families(cohort.table, cohort.variants, quants, primary, PAPER14)
    corr = bh_over_families(corr, families)

    ext = extended_analysis(cohort, config, matrices, zone_members, zone_methods, corr, targets, equiv, primary,
                            families, notes)  # fmt: skip
    corr = ext.pop("correlations")

    failure = None
    router = None
    if matrices is not None and kld_col is not None:
        failure = failure_prediction(quants, order, matrices, config.level, config.progress)
        router = router_accuracy(
            quants, order, matrices, config.max_router_pairs, config.seed, config.level, config.n_boot
        )
    elif matrices is None:
        notes.append("no per-prompt outcomes: flips, volume/direction, failure prediction and router are not computed")
    else:
        notes.append("no per-prompt KLD: failure prediction and router are not computed")
    if len(silent_q) < 3:
        notes.append(f"the silent zone holds {len(silent_q)} quant(s): fewer than 3: no correlation there")

    dvk = direction_vs_kld(cohort, matrices, config.silent, primary, n_splits=config.crossfit_splits,
                           n_boot=config.n_boot, seed=config.seed, level=config.level, alpha=config.silent.alpha,
                           truth=truth)  # fmt: skip
    if dvk is None and any(v.endswith("@calibration") for v in cohort.variants):
        notes.append("direction_vs_kld not computed: needs per-prompt outcomes and the primary KLD variant")

    headline = _headline(corr, primary, failure, router)
    sz_extra = {}
    if method == "equivalence":
        sz_extra = {"delta": config.silent.delta, "equivalence_scope": config.silent.equivalence_scope,
                    "paired": bool(zone["paired"].iloc[0]) if len(zone) else None,
                    "groups": groups(zone), "groups_composite": groups(zone, "verdict_composite")}  # fmt: skip
    summary = {
        "summary_version": SUMMARY_VERSION,
        "source": cohort.source,
        "settings": {
            **asdict(config),
            "silent": asdict(config.silent) | {"resolved_method": method},
            "kld_column_used": kld_col,
        },
        "cohort": {
            "n_quants": len(quants),
            "reference": cohort.reference,
            "tasks": list(cohort.tasks),
            "variants": list(cohort.variants),
            "primary_variant": primary,
            "n_prompts": {t: len(m.prompt_ids) for t, m in matrices.items()} if matrices else None,
            "reference_scores": {
                k: _clean(float(cohort.table.at[cohort.reference, SCORE_PREFIX + k])) for k in task_keys
            }
            if cohort.reference
            else None,
        },
        "silent_zone": {
            "method": method,
            "correction": config.silent.correction if method == "mcnemar" else None,
            "scope": config.silent.scope if method == "mcnemar" else None,
            "alpha": config.silent.alpha if method in ("mcnemar", "equivalence") else None,
            "band": config.silent.band if method == "delta" else None,
            "n_full": len(quants),
            "n_silent": len(silent_q),
            "n_outside": len(quants) - len(silent_q),
            "silent_quants": silent_q,
            **sz_extra,
            "per_quant": _records(zone),
        },
        "paper_zone": None
        if paper is None
        else {
            "method": "mcnemar",
            "correction": config.silent.correction,
            "scope": config.silent.scope,
            "alpha": config.silent.alpha,
            "n_silent": len(zone_members["paper"]),
            "silent_quants": zone_members["paper"],
            "per_quant": _records(paper),
        },
        "headline": headline,
        "correlations": table_records(corr),
        "volume_direction": None
        if flips is None
        else {
            "per_quant": _records(flips),
            "direction_identity_max_abs_error": identity_err,
            "note": "direction (gained - lost) summed over a task's prompts equals n x (accuracy change) exactly",
        },
        "direction": None
        if direction is None
        else {"per_quant": _records(direction), "note": DIRECTION_NOTE},
        "failure_prediction": None
        if failure is None
        else {
            "kld_column": kld_col,
            "cohort": _clean_dict(failure["cohort"]),
            "per_quant": _records(failure["per_quant"]),
        },
        "router": None if router is None else _clean_dict(router),  # no decision at all: NaN -> null
        **ext,
        "direction_vs_kld": dvk,
        "notes": notes,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    return AnalysisResult(summary, cohort.table, zone, flips, failure, corr, primary, equiv, direction, paper)


DIRECTION_NOTE = (
    "loss rate = lost / reference-passed, gain rate = gained / reference-failed (Clopper-Pearson CIs); balance = "
    "(gained - lost) / volume; blind expectation = sum over tasks of volume x (1 - 2 x reference accuracy): what flips "
    "that ignore correctness give; excess = direction - blind expectation"
)


# What the seed paper ("Displacement Is Not Direction", arXiv 2606.19558) reports, shown beside ours for orientation.
PAPER = {
    "rho.full.score.composite": "-0.72 / -0.86",
    "rho.silent.score.composite": "+0.00 / -0.24 (p=0.36)",
    "rho.silent.volume.composite": "+0.94 / +0.55",
    "rho.silent.direction.composite": "weak",
    "rho.paper.score.composite": "+0.00 / -0.24 (p=0.36)",
    "rho.paper.volume.composite": "+0.94 / +0.55",
    "failure.gm_ratio": "1.08-1.22",
    "router.accuracy": "0.423-0.494",
}


def _headline(corr: pd.DataFrame, primary: str, failure: dict | None, router: dict | None) -> list[dict]:
    """The handful of numbers the paper's claims rest on, for the primary variant, each with its CI."""
    rows = []
    for zone, target in (("full", "score.composite"), ("silent", "score.composite"), ("paper", "score.composite"),
                         ("full", "volume.composite"), ("silent", "volume.composite"), ("paper", "volume.composite"),
                         ("silent", "direction.composite"), ("full", "balance.composite"),
                         ("silent", "balance.composite"), ("paper", "balance.composite")):  # fmt: skip
        d = corr[(corr["variant"] == primary) & (corr["zone"] == zone) & (corr["target"] == target)]
        if d.empty:
            continue
        r = d.iloc[0]
        key = f"rho.{zone}.{target}"
        rows.append({"name": key, "value": _clean(r["rho"]), "ci_low": _clean(r["ci_low"]),
                     "ci_high": _clean(r["ci_high"]), "p": _clean(r["p"]), "n": _clean(r["n"]),
                     "paper": PAPER.get(key), "noise_ceiling": _clean(r.get("noise_ceiling")),
                     "rho_cf": _clean(r.get("rho_cf")), "noise_ceiling_cf": _clean(r.get("noise_ceiling_cf")),
                     "p_bh": _clean(r.get("p_bh"))})  # fmt: skip
    if failure is not None:
        g = failure["cohort"]["gm_ratio"]
        rows.append({"name": "failure.gm_ratio", "value": g["value"], "ci_low": g["ci_low"], "ci_high": g["ci_high"],
                     "p": None, "n": g["n_quants"], "paper": PAPER["failure.gm_ratio"]})  # fmt: skip
        a = failure["cohort"]["auroc"]
        rows.append({"name": "failure.auroc", "value": _clean(a["value"]), "ci_low": _clean(a["ci_low"]),
                     "ci_high": _clean(a["ci_high"]), "p": _clean(a["p"]), "n": a["n_quants"],
                     "paper": None})  # fmt: skip
    if router is not None:
        a, b = router["accuracy"], router["accuracy_prompt_bootstrap"]  # the CI that respects shared prompts
        rows.append({"name": "router.accuracy", "value": a["value"], "ci_low": _clean(b["ci_low"]),
                     "ci_high": _clean(b["ci_high"]), "p": a["p"], "n": a["n"],
                     "paper": PAPER["router.accuracy"]})  # fmt: skip
    return rows


def _records(frame: pd.DataFrame) -> dict:
    """{quant: {column: value}} with JSON-clean values (NaN/inf -> None, numpy scalars -> Python)."""
    return records(frame)


def _clean_dict(d: dict) -> dict:
    return {k: _clean_dict(v) if isinstance(v, dict) else _clean(v) for k, v in d.items()}
