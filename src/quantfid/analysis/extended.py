"""The statistics of issue 12 assembled for one cohort: power, noise ceilings, cross-fitting, failure-prediction
controls, router baselines, and the plain-words decision the report opens with.

Called by ``analyze``; every number lands in summary.json under ``equivalence``, ``noise_ceiling``, ``crossfit``,
``failure_controls``, ``router_baselines``, ``variant_families`` and ``decision`` (keys that did not exist before
this module; the older keys are unchanged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE, N_PREFIX, SCORE_PREFIX, Cohort, TaskMatrix
from quantfid.analysis.controls import failure_controls
from quantfid.analysis.crossfit import crossfit
from quantfid.analysis.equivalence import VERDICTS, groups
from quantfid.analysis.power import (
    min_detectable_difference,
    prompts_for_difference,
    prompts_for_equivalence,
    zero_flip_floor,
)
from quantfid.analysis.reliability import (
    ceiling,
    half_masks,
    prompt_layout,
    split_half_reliability,
    targets_on,
)
from quantfid.analysis.router_baselines import router_baselines
from quantfid.analysis.stats import _clean, records, table_records
from quantfid.analysis.variants import bh_over_families, families_summary
from quantfid.api.schema import QUANT_FACT_METRICS
from quantfid.api.variants import PAPER_VARIANT_NAMES

DEFAULT_RELIABILITY_SPLITS = 100


def extended_analysis(cohort: Cohort, config, matrices: dict[str, TaskMatrix] | None,
                      zone_members: dict[str, list[str]], zone_methods: dict[str, str], corr: pd.DataFrame,
                      targets: dict[str, np.ndarray], equiv: pd.DataFrame | None, primary: str,
                      families: pd.DataFrame, notes: list[str]) -> dict:  # fmt: skip
    quants = cohort.quants
    order = list(cohort.table.index)
    out: dict = {}
    out["variant_families"] = {
        "per_variant": {v: {k: _clean(x) for k, x in r.items()} for v, r in families.to_dict("index").items()},
        "merged": families_summary(families),
        "n_variants": len(families),
        "n_families": int(families["family"].nunique()),
        "correction": "Benjamini-Hochberg over the variant families within each (zone, target); raw p kept as 'p'",
    }
    # ---- equivalence evidence + power
    power = None
    if equiv is not None:
        power = power_table(equiv, config.silent.delta, config.silent.alpha, config.power)
        out["equivalence"] = equivalence_section(equiv, power, config)
    # ---- noise ceiling (split-half reliability within each zone)
    masks_members = {z: np.isin(np.array(quants), m) for z, m in zone_members.items()}
    target_names = list(targets)
    reliab: dict[str, dict] = {}
    layout = None
    if matrices is not None:
        layout = prompt_layout(quants, order, matrices)
        half = targets_on(layout, half_masks(layout.task_of, config.reliability_splits, config.seed))
        full = targets_on(layout, np.ones((1, layout.n_prompts), dtype=bool))
        for z, m in masks_members.items():
            reliab[z] = split_half_reliability(half, full, m, target_names)
        method = f"split-half over {config.reliability_splits} seeded stratified splits, Spearman-Brown"
    else:
        for z, m in masks_members.items():
            reliab[z] = binomial_reliability(cohort, m, [t for t in target_names if t.startswith("score.")])
        method = ("binomial: 1 - mean sampling variance / variance of the scores (no per-prompt outcomes; ignores "
                  "that quants share prompts, so it understates the reliability of their differences)")  # fmt: skip
    out["noise_ceiling"] = {"method": method, "zones": reliab}
    corr = corr.copy()
    corr["reliability"] = [reliab.get(z, {}).get(t, {}).get("reliability") for z, t in zip(corr["zone"], corr["target"],
                                                                                            strict=True)]  # fmt: skip
    corr["noise_ceiling"] = [reliab.get(z, {}).get(t, {}).get("noise_ceiling")
                             for z, t in zip(corr["zone"], corr["target"], strict=True)]  # fmt: skip
    # ---- cross-fitting
    if layout is not None:
        x = np.stack([cohort.table.loc[quants, v].to_numpy(float) for v in cohort.variants])
        zones = {z: (zone_methods[z], config.silent) for z in zone_members if z != "full"}
        cf = crossfit(layout, x, list(cohort.variants), target_names, zones, config.crossfit_splits, config.seed,
                      config.level)  # fmt: skip
        cf = bh_over_families(cf, families, out_column="p_bh")
        out["crossfit"] = {
            "n_splits": config.crossfit_splits,
            "n_folds": 2 * config.crossfit_splits,
            "ci_method": "Fisher z of the mean fold rho, Fieller variance 1.06/(n-3) at the mean zone size",
            "rows": table_records(cf),
        }
        cols = {"rho_cf": "rho_cf", "ci_low": "rho_cf_ci_low", "ci_high": "rho_cf_ci_high", "p": "p_cf",
                "p_bh": "p_cf_bh", "noise_ceiling_cf": "noise_ceiling_cf", "n_zone_mean": "n_zone_cf"}  # fmt: skip
        add = cf[["zone", "variant", "target", *cols]].rename(columns=cols)
        corr = corr.merge(add, on=["zone", "variant", "target"], how="left")
    else:
        notes.append("no per-prompt outcomes: no cross-fitting (it splits the prompts); noise ceilings are binomial "
                     "approximations")  # fmt: skip
    # ---- failure-prediction controls and router baselines
    kld_ok = matrices is not None and all(m.kld is not None for m in matrices.values())
    if kld_ok:
        fc = failure_controls(quants, order, matrices, config.level, config.n_boot, config.seed,
                              config.max_clogit_cells)  # fmt: skip
        out["failure_controls"] = {"cohort": _clean_deep(fc["cohort"]),
                                   "per_quant": _records(fc["per_quant"])}  # fmt: skip
        zones_r = {z: m for z, m in zone_members.items() if z != "full"}
        out["router_baselines"] = router_baselines(quants, order, matrices, zones_r, config.max_router_pairs,
                                                   config.seed, config.level, config.n_boot)  # fmt: skip
    else:
        out["failure_controls"] = None
        out["router_baselines"] = None
    out["decision"] = decision(cohort, config, equiv, power, corr, reliab, zone_members, primary, families)
    out["correlations"] = corr
    return out


# ---------------------------------------------------------------- power


def power_table(equiv: pd.DataFrame, delta: float, alpha: float, power: float) -> pd.DataFrame:
    """Per quant and unit: mdd, n_equivalence, n_difference (prompts of that unit) and the resolve factor."""
    units = [c[len("diff.") :] for c in equiv.columns if c.startswith("diff.")]
    f: dict[str, np.ndarray] = {}  # columns, assembled into one frame at the end
    factors_eq, factors_diff = [], []
    for u in units:
        n = equiv[f"n.{u}"].to_numpy(float)
        d = equiv[f"diff.{u}"].to_numpy(float)
        if f"lost.{u}" in equiv:
            vol = (equiv[f"lost.{u}"] + equiv[f"gained.{u}"]).to_numpy(float)
        else:  # unpaired: n x the per-prompt variance of a difference of independent proportions stands in
            vol = n * equiv[f"var.{u}"].to_numpy(float)
        f[f"mdd.{u}"] = min_detectable_difference(vol, n, alpha, power)
        f[f"n_equivalence.{u}"] = prompts_for_equivalence(d, vol, n, delta, alpha, power)
        f[f"n_difference.{u}"] = prompts_for_difference(d, vol, n, alpha, power)
        with np.errstate(invalid="ignore", divide="ignore"):
            eq = equiv[f"verdict.{u}"].to_numpy() == "equivalent"
            factors_eq.append(np.where(eq, 0.0, f[f"n_equivalence.{u}"] / n))
            factors_diff.append(f[f"n_difference.{u}"] / n)
    feq, fdiff = np.stack(factors_eq, axis=1), np.stack(factors_diff, axis=1)
    f["resolve_factor_all"] = np.minimum(feq.max(axis=1), fdiff.min(axis=1))
    f["resolve_factor_composite"] = np.minimum(feq[:, 0], fdiff[:, 0])
    return pd.DataFrame(f, index=equiv.index)


def equivalence_section(equiv: pd.DataFrame, power: pd.DataFrame, config) -> dict:
    s = config.silent
    scope = s.equivalence_scope
    col = "resolve_factor_all" if scope == "all" else "resolve_factor_composite"
    ind = equiv["verdict"] == "indeterminate"
    factors = power.loc[ind, col].to_numpy(float)
    n_comp = float(equiv[f"n.{COMPOSITE}"].iloc[0]) if len(equiv) else float("nan")
    units = [c[len("n.") :] for c in equiv.columns if c.startswith("n.")]
    per_unit_n = {u: int(equiv[f"n.{u}"].iloc[0]) for u in units} if len(equiv) else {}
    floor = zero_flip_floor(s.delta, s.level)
    finite = factors[np.isfinite(factors)]
    return {
        "delta": s.delta,
        "scope": scope,
        "level": s.level,
        "alpha": s.alpha,
        "power": config.power,
        "paired": bool(equiv["paired"].iloc[0]) if len(equiv) else None,
        "ci_method": "Tango score interval (paired)" if len(equiv) and bool(equiv["paired"].iloc[0])
        else "Miettinen-Nurminen score interval (unpaired: no per-prompt outcomes)",
        "groups": groups(equiv),
        "counts": {v: int((equiv["verdict"] == v).sum()) for v in VERDICTS},
        "groups_composite": groups(equiv, "verdict_composite"),
        "counts_composite": {v: int((equiv["verdict_composite"] == v).sum()) for v in VERDICTS},
        "prompts_per_unit": per_unit_n,
        "zero_flip_floor": floor,
        "units_below_floor": [u for u, n in per_unit_n.items() if (scope == "all" or u == COMPOSITE) and n < floor],
        "resolve": {
            "n_indeterminate": int(ind.sum()),
            "factor_median": _clean(float(np.median(finite))) if len(finite) else None,
            "factor_max": _clean(float(finite.max())) if len(finite) else None,
            "n_unresolvable": int((~np.isfinite(factors)).sum()),
            "prompts_composite_median": _clean(float(np.median(finite) * n_comp)) if len(finite) else None,
            "prompts_composite_max": _clean(float(finite.max() * n_comp)) if len(finite) else None,
            "note": "benchmark size multiplier at which each indeterminate quant would, with the stated power, be "
            "shown equivalent (every unit of the scope) or different (any unit), if its observed difference and "
            "discordance held",
        },
        "per_quant": _records(equiv.join(power)),
    }


# ---------------------------------------------------------------- noise ceiling without per-prompt outcomes


def binomial_reliability(cohort: Cohort, members: np.ndarray, names: list[str]) -> dict[str, dict]:
    """1 - mean(p(1-p)/n) / var(scores) among the members (classical test theory with binomial sampling error)."""
    out = {}
    quants = np.array(cohort.quants)[members]
    for name in names:
        unit = name.split(".", 1)[1]
        s = cohort.table.loc[quants, SCORE_PREFIX + unit].to_numpy(float)
        ncol = N_PREFIX + unit
        r = float("nan")
        if ncol in cohort.table.columns and len(s) >= 3:
            n = cohort.table.loc[quants, ncol].to_numpy(float)
            var = float(np.var(s, ddof=1))
            if var > 0:
                r = 1.0 - float(np.mean(s * (1 - s) / n)) / var
        out[name] = {"n_quants": len(s), "reliability": _clean(r), "noise_ceiling": _clean(ceiling(r)),
                     "method": "binomial"}  # fmt: skip
    return out


# ---------------------------------------------------------------- the decision: what the report says first


def decision(cohort: Cohort, config, equiv, power, corr: pd.DataFrame, reliab: dict, zone_members: dict,
             primary: str, families: pd.DataFrame) -> dict:  # fmt: skip
    t = cohort.table
    quants = cohort.quants
    out: dict = {"primary_variant": primary, "delta": config.silent.delta,
                 "equivalence_scope": config.silent.equivalence_scope}  # fmt: skip
    facts = [c for c in QUANT_FACT_METRICS if c in t.columns]
    out["quant_facts"] = facts
    rows = []
    for q in quants:
        r = {"quant": q, "score": _clean(float(t.at[q, SCORE_PREFIX + COMPOSITE]))}
        for c in facts:
            r[c] = _clean(float(t.at[q, c]))
        if equiv is not None:
            r["verdict"] = str(equiv.at[q, "verdict"])
            r["verdict_composite"] = str(equiv.at[q, "verdict_composite"])
        rows.append(r)
    for c in facts:  # Pareto front: no other quant is at most as large and scores higher (or equal and smaller)
        for r in rows:
            r[f"pareto.{c}"] = _on_front(r, rows, c)
    out["quants"] = rows
    if equiv is not None:
        eq = [r for r in rows if r.get("verdict") == "equivalent"]
        eqc = [r for r in rows if r.get("verdict_composite") == "equivalent"]
        out["equivalent"] = [r["quant"] for r in eq]
        out["equivalent_composite_only"] = [r["quant"] for r in eqc]
        for c in facts:
            cand = [r for r in eq if r.get(c) is not None]
            out[f"smallest_equivalent_by.{c}"] = min(cand, key=lambda r: r[c])["quant"] if cand else None
            cand = [r for r in eqc if r.get(c) is not None]
            out[f"smallest_equivalent_composite_by.{c}"] = min(cand, key=lambda r: r[c])["quant"] if cand else None
    out["variant_trust"] = variant_trust(corr, reliab, zone_members, families, primary, config)
    return out


def _on_front(r: dict, rows: list[dict], c: str) -> bool | None:
    if r.get(c) is None or r.get("score") is None:
        return None
    for o in rows:
        if o is r or o.get(c) is None or o.get("score") is None:
            continue
        if o[c] <= r[c] and o["score"] >= r["score"] and (o[c] < r[c] or o["score"] > r["score"]):
            return False
    return True


def variant_trust(corr: pd.DataFrame, reliab: dict, zone_members: dict, families: pd.DataFrame, primary: str,
                  config) -> list[dict]:  # fmt: skip
    """Per variant family, for the composite score: can it be trusted to rank the full cohort, and each zone?"""
    target = f"score.{COMPOSITE}"
    c = corr[corr["target"] == target].set_index(["zone", "variant"])
    full = c.loc["full"]["rho"].abs() if "full" in c.index.get_level_values(0) else pd.Series(dtype=float)
    paper_fams = [families.at[v, "family"] for v in PAPER_VARIANT_NAMES if v in families.index]
    rest = sorted(set(families["family"]), key=lambda f: -float(full.get(f, 0.0) if pd.notna(full.get(f)) else 0.0))
    fams = list(dict.fromkeys([families.at[primary, "family"], *paper_fams, *rest]))
    out = []
    for fam in fams:
        members = list(families.index[families["family"] == fam])
        entry = {"family": fam, "members": members}
        full_sign = None
        for zone in zone_members:
            if (zone, fam) not in c.index:
                continue
            r = c.loc[(zone, fam)]
            rho = _clean(float(r["rho"]))
            if zone == "full" and rho is not None:
                full_sign = np.sign(rho)
            n_cf = float(r["n_zone_cf"]) if "n_zone_cf" in r and pd.notna(r.get("n_zone_cf")) else 0.0
            # cross-fitted where the zone decided on half the prompts is big enough; else the full-sample numbers
            use_cf = zone != "full" and "rho_cf" in r and pd.notna(r.get("rho_cf")) and n_cf >= 5
            rho_use = _clean(float(r["rho_cf"])) if use_cf else rho
            ceil = _clean(float(r["noise_ceiling_cf"])) if use_cf else _clean(r.get("noise_ceiling"))
            p_use = _clean(float(r["p_cf_bh"])) if use_cf and pd.notna(r.get("p_cf_bh")) else _clean(r.get("p_bh"))
            n = int(n_cf) if use_cf else int(r["n"] or 0)
            verdict, why = _trust_verdict(rho_use, ceil, p_use, n, full_sign if zone != "full" else None, config)
            if zone != "full" and not use_cf and n >= 5:
                why += (f" (full sample: the zone decided on half the prompts holds {n_cf:.1f} quants on average, too "
                        "few to cross-fit, so selection on the outcome is not removed here)")  # fmt: skip
            entry[zone] = {"n_quants": len(zone_members[zone]), "rho": rho, "ci_low": _clean(r["ci_low"]),
                           "ci_high": _clean(r["ci_high"]), "p_bh": _clean(r.get("p_bh")),
                           "noise_ceiling": _clean(r.get("noise_ceiling")),
                           "rho_cf": _clean(r.get("rho_cf")) if use_cf else None,
                           "noise_ceiling_cf": ceil if use_cf else None, "p_cf_bh": p_use if use_cf else None,
                           "verdict": verdict, "why": why}  # fmt: skip
        out.append(entry)
    return out


def _trust_verdict(rho, ceil, p, n, expected_sign, config) -> tuple[str, str]:
    """ranks / weak / reversed (a BH-significant rho), fails / cannot tell (not significant: the noise ceiling says
    whether the benchmark could have shown one), too few quants."""
    alpha = config.silent.alpha
    if n < 5 or rho is None:
        return "too few quants", (f"{n:g} quant(s) in this zone: no ranking to judge" + (
            " (with this benchmark no quant could be placed in it: see the power line)" if n == 0 else ""))
    c = "n/a" if ceil is None else f"{ceil:.2f}"
    frac = abs(rho) / ceil if ceil else float("inf")
    of = "above the estimated ceiling (itself estimated from few quants or flips)" if frac > 1 else f"{frac:.0%} of it"
    if p is not None and p < alpha:
        if expected_sign is not None and np.sign(rho) != expected_sign:
            return "reversed", f"rho {rho:+.2f} (BH p {p:.2g}) has the opposite sign to the full cohort's"
        if frac >= config.trust_rho:
            return "ranks", f"|rho| {abs(rho):.2f} (BH p {p:.2g}); noise ceiling {c}: {of}"
        return "weak", f"|rho| {abs(rho):.2f} (BH p {p:.2g}) is only {of}; the benchmark allows up to {c}"
    pp = "n/a" if p is None else f"{p:.2g}"
    if ceil is None or ceil < config.trust_ceiling:
        return "cannot tell", (f"|rho| {abs(rho):.2f} (BH p {pp}), but the benchmark's own ranking of these quants is "
                               f"too noisy (noise ceiling {c} < {config.trust_ceiling}): even a perfect metric could "
                               "not show a clear correlation; more prompts are needed")  # fmt: skip
    return "fails", (f"the benchmark could show a ranking (noise ceiling {c}) but |rho| is {abs(rho):.2f} (BH p {pp}; "
                     f"{of})")  # fmt: skip


# ---------------------------------------------------------------- helpers


def _records(frame: pd.DataFrame) -> dict:
    """{quant: {column: value}} with JSON-clean values (NaN/inf -> None, numpy scalars -> Python)."""
    return records(frame)


def _clean_deep(d):
    if isinstance(d, dict):
        return {k: _clean_deep(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [_clean_deep(v) for v in d]
    return _clean(d)
