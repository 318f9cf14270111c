"""The report: a self-contained HTML page (PNG plots embedded as base64) plus summary.json holding every number.

Plots: fidelity vs score with the silent zone marked; Spearman rho per variant with CIs for both zones; volume and
direction vs fidelity; per-prompt KLD of passed vs failed prompts. The PNGs are also written next to the HTML.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from quantfid.analysis import report_top
from quantfid.analysis.analyze import PAPER14, AnalysisResult
from quantfid.analysis.cohort import COMPOSITE, SCORE_PREFIX
from quantfid.analysis.render import fmt, img, log_axis, save, table
from quantfid.analysis.report_direction import direction_vs_kld_section

SILENT_COLOR, OUTSIDE_COLOR, REF_COLOR = "#1f77b4", "#d62728", "#444444"
MAX_PLOTTED_VARIANTS = 40


def plot_fidelity_vs_score(res: AnalysisResult, path: Path) -> Path:
    """Composite score against the primary variant; silent-zone quants in blue, the others in red."""
    s, t, v = res.summary, res.table, res.primary_variant
    quants = [q for q in t.index if q != s["cohort"]["reference"]]
    silent = res.zone.loc[quants, "silent"].to_numpy(bool)
    x = t.loc[quants, v].to_numpy(float)
    y = t.loc[quants, SCORE_PREFIX + COMPOSITE].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if "verdict" in res.zone.columns:  # equivalence: three groups
        ver = res.zone.loc[quants, "verdict"].to_numpy()
        for name, (col, mk) in report_top.VERDICT_STYLE.items():
            m = ver == name
            ax.scatter(x[m], y[m], c=col, s=22, marker=mk, label=f"{name} (n={int(m.sum())})")
    else:
        ax.scatter(x[silent], y[silent], c=SILENT_COLOR, s=22, label=f"silent zone (n={int(silent.sum())})")
        ax.scatter(x[~silent], y[~silent], c=OUTSIDE_COLOR, s=22, marker="x",
                   label=f"outside (n={int((~silent).sum())})")  # fmt: skip
    ref = s["cohort"]["reference_scores"]
    if ref and ref.get(COMPOSITE) is not None:
        ax.axhline(ref[COMPOSITE], color=REF_COLOR, ls="--", lw=1, label="reference")
    log_axis(ax, x)
    ax.set_xlabel(v)
    ax.set_ylabel("composite accuracy")
    ax.set_title(f"Fidelity vs benchmark score (silent zone: {s['silent_zone']['method']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_rho_per_variant(res: AnalysisResult, path: Path) -> Path:
    """Spearman rho (with bootstrap CI) of every variant family (its representative; "+k" = k rank-equivalent
    members) vs score / volume / balance, every zone side by side."""
    c = res.correlations
    targets = [f"score.{COMPOSITE}", f"volume.{COMPOSITE}", f"balance.{COMPOSITE}", f"direction.{COMPOSITE}"]
    targets = [tg for tg in targets if (c["target"] == tg).any()][:3]
    members = {}
    if "family" in c.columns:  # one row per family of rank-equivalent variants
        members = c.drop_duplicates("variant").groupby("family")["variant"].nunique().to_dict()
        c = c[c["variant"] == c["family"]]
    variants = sorted(c["variant"].unique())
    if len(variants) > MAX_PLOTTED_VARIANTS:  # keep the figure readable: the paper's 14 first, then by |rho|
        full = c[(c["zone"] == "full") & (c["target"] == targets[0])].set_index("variant")["rho"].abs()
        rest = full.drop([v for v in PAPER14 if v in full.index]).sort_values(ascending=False, na_position="last")
        keep = [v for v in PAPER14 if v in full.index] + list(rest.index)
        variants = sorted(keep[:MAX_PLOTTED_VARIANTS])
    fig, axes = plt.subplots(
        1, len(targets), figsize=(4.2 * len(targets) + 1.5, 0.28 * len(variants) + 1.6), sharey=True, squeeze=False
    )
    ypos = np.arange(len(variants))
    for ax, tg in zip(axes[0], targets, strict=True):
        zones = ((-0.25, "full", OUTSIDE_COLOR), (0.0, "silent", SILENT_COLOR), (0.25, "paper", "#9467bd"))
        for off, zone, col in zones:
            if not (c["zone"] == zone).any():
                continue
            d = c[(c["target"] == tg) & (c["zone"] == zone)].set_index("variant").reindex(variants)
            rho = d["rho"].to_numpy(float)
            # a percentile CI need not contain the estimate (small n, |rho| near 1): error bars cannot be negative
            lo = np.clip(np.nan_to_num(rho - d["ci_low"].to_numpy(float), nan=0.0), 0.0, None)
            hi = np.clip(np.nan_to_num(d["ci_high"].to_numpy(float) - rho, nan=0.0), 0.0, None)
            n = int(d["n"].max()) if d["n"].notna().any() else 0
            ax.errorbar(
                rho,
                ypos + off,
                xerr=[lo, hi],
                fmt="o",
                ms=3,
                color=col,
                elinewidth=1,
                capsize=2,
                label=f"{zone} (n={n})",
            )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(f"rho vs {tg}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels([v + (f" (+{members[v] - 1})" if members.get(v, 1) > 1 else "") for v in variants],
                               fontsize=7)  # fmt: skip
    return save(fig, path)


def plot_volume_direction(res: AnalysisResult, path: Path) -> Path:
    """Flip volume and direction (composite) against the primary variant, silent zone marked."""
    f, t, v = res.flips, res.table, res.primary_variant
    quants = list(f.index)
    silent = res.zone.loc[quants, "silent"].to_numpy(bool)
    x = t.loc[quants, v].to_numpy(float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("volume", "direction"), strict=True):
        y = f[f"{kind}.{COMPOSITE}"].to_numpy(float)
        ax.scatter(x[silent], y[silent], c=SILENT_COLOR, s=20, label="silent zone")
        ax.scatter(x[~silent], y[~silent], c=OUTSIDE_COLOR, s=20, marker="x", label="outside")
        if kind == "direction":
            ax.axhline(0, color=REF_COLOR, lw=0.8)
        log_axis(ax, x)
        ax.set_xlabel(v)
        ax.set_ylabel(f"{kind} (flips, all tasks)")
        ax.set_title("volume = lost + gained" if kind == "volume" else "direction = gained - lost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_kld_passed_failed(res: AnalysisResult, path: Path) -> Path:
    """Per-prompt KLD of passed vs failed prompts: pooled over quants, and within quant (each quant's median removed,
    so the gap left is what per-prompt KLD says beyond "this quant is more damaged")."""
    fp = res.failure
    ln10 = np.log(10)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = (
        ("pooled over quants", fp["log_kld_failed"], fp["log_kld_passed"], "log10 per-prompt KLD"),
        ("within quant", fp["centred_failed"], fp["centred_passed"], "log10 KLD - quant median"),
    )
    for ax, (title, lf, lp, xl) in zip(axes, panels, strict=True):
        lf, lp = lf / ln10, lp / ln10
        both = np.concatenate([lf, lp])
        bins = np.linspace(np.percentile(both, 0.5), np.percentile(both, 99.5), 60) if len(both) > 1 else 10
        ax.hist(lp, bins=bins, density=True, alpha=0.55, color=SILENT_COLOR, label=f"passed (n={len(lp)})")
        ax.hist(lf, bins=bins, density=True, alpha=0.55, color=OUTSIDE_COLOR, label=f"failed (n={len(lf)})")
        ax.set_xlabel(f"{xl} ({res.summary['failure_prediction']['kld_column']})")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    coh = res.summary["failure_prediction"]["cohort"]["gm_ratio"]
    fig.suptitle(f"Per-prompt KLD, passed vs failed (per-quant GM ratio failed/passed, mean {fmt(coh['value'])})")
    return save(fig, path)


def _corr_frame(c: pd.DataFrame, target: str) -> pd.DataFrame:
    """One row per variant: rho, CI, p, n per zone, and beside them p_bh, the noise ceiling and (in a zone) the
    cross-fitted rho with its ceiling."""
    d = c[c["target"] == target]
    rows: dict[str, dict] = {}
    extra = [("p_bh", "p_bh"), ("noise_ceiling", "ceiling"), ("rho_cf", "rho_cf"), ("noise_ceiling_cf", "ceiling_cf")]
    for r in d.itertuples(index=False):
        row = rows.setdefault(r.variant, {})
        z = r.zone
        row[f"{z}: rho"] = r.rho
        row[f"{z}: 95% CI"] = f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
        row[f"{z}: p"] = r.p
        row[f"{z}: n"] = r.n
        for col, label in extra:
            if col in d.columns and not (z == "full" and col in ("rho_cf", "noise_ceiling_cf")):
                v = getattr(r, col)
                row[f"{z}: {label}"] = None if isinstance(v, float) and not np.isfinite(v) else v
    order = [z for z in ("full", "silent", "paper") if z in set(d["zone"])]
    f = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    f = f[[c_ for z in order for c_ in f.columns if c_.startswith(f"{z}: ")]]
    f.index.name = "variant"
    return f


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#eee}h2{border-bottom:1px solid #ccc}.note{background:#fff8e0;padding:0.5em}"""


def write_report(res: AnalysisResult, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, summary.json and plots/*.png under out_dir; returns their paths."""
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    s = res.summary
    paths = {"fidelity_vs_score": plot_fidelity_vs_score(res, plots / "fidelity_vs_score.png"),
             "rho_per_variant": plot_rho_per_variant(res, plots / "rho_per_variant.png")}  # fmt: skip
    if res.flips is not None:
        paths["volume_direction"] = plot_volume_direction(res, plots / "volume_direction.png")
    if res.failure is not None:
        paths["kld_passed_failed"] = plot_kld_passed_failed(res, plots / "kld_passed_failed.png")
    pareto = report_top.plot_pareto(res, plots / "pareto.png")
    if pareto is not None:
        paths["pareto"] = pareto
    sz = s["silent_zone"]
    parts = [
        f"<html><head><meta charset='utf-8'><title>quantfid analysis</title><style>{CSS}</style></head><body>",
        "<h1>quantfid analysis: does the fidelity number tell you which quant to ship?</h1>",
    ]
    src = s["source"]
    parts.append(f"<p>Source: <code>{html.escape(json.dumps(src))}</code></p>")
    parts.append(
        f"<p>{s['cohort']['n_quants']} quants vs reference <b>{fmt(s['cohort']['reference'])}</b>; "
        f"tasks: {html.escape(', '.join(s['cohort']['tasks']) or COMPOSITE)}; "
        f"{len(s['cohort']['variants'])} fidelity variants; prompts per task: "
        f"{html.escape(str(s['cohort']['n_prompts']))}. Every number below is in summary.json.</p>"
    )
    for n in s["notes"]:
        parts.append(f"<p class='note'>{html.escape(n)}</p>")
    parts.extend(report_top.top_section(res, paths))
    parts.extend(direction_vs_kld_section(s))
    parts.append("<h1>Details</h1>")
    if s.get("headline"):
        h = pd.DataFrame(s["headline"]).set_index("name")
        h["95% CI"] = [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(h["ci_low"], h["ci_high"], strict=True)]
        for k in ("noise_ceiling", "rho_cf", "noise_ceiling_cf"):
            if k not in h.columns:
                h[k] = None
        h = h[["value", "95% CI", "p", "n", "noise_ceiling", "rho_cf", "noise_ceiling_cf", "paper"]]
        h.index.name = f"headline ({res.primary_variant})"
        parts.append(
            "<h2>Headline numbers</h2><p>For the primary variant; the paper's values (arXiv 2606.19558) "
            "are for orientation, measured on other models and cohorts.</p>" + table(h)
        )
    parts.extend(report_top.equivalence_details(res))
    parts.append("<h2>Silent zone</h2>")
    if sz["method"] == "mcnemar":
        desc = (
            f"quants whose per-prompt outcomes do not differ from the reference's on any task by the exact McNemar "
            f"test, p-values corrected by {sz['correction']} (scope: {sz['scope']}) at alpha={sz['alpha']}"
        )
    elif sz["method"] == "equivalence":
        desc = (
            f"quants whose paired CI of the accuracy difference lies inside +-{sz['delta']} on "
            f"{'the composite and every task' if sz['equivalence_scope'] == 'all' else 'the composite'} (equivalent); "
            f"the paper-style McNemar zone ({(s.get('paper_zone') or {}).get('n_silent', 'n/a')} quants) is reported "
            "beside it as zone 'paper'"
        )
    elif sz["method"] == "ci_overlap":
        desc = "quants whose Wilson 95% CI of accuracy overlaps the reference's on every task"
    else:
        desc = f"quants within |accuracy - reference| <= {sz['band']} on every task"
    parts.append(
        f"<p>Definition ({sz['method']}): {html.escape(desc)}.<br><b>Full cohort: {sz['n_full']} quants; "
        f"silent zone: {sz['n_silent']}; outside: {sz['n_outside']}.</b></p>"
    )
    parts.append(img(paths["fidelity_vs_score"], "fidelity vs score"))
    parts.append(
        "<details><summary>per-quant silent-zone evidence</summary>"
        + table(res.zone.join(res.table[[res.primary_variant, SCORE_PREFIX + COMPOSITE]]), 300)
        + "</details>"
    )
    parts.append("<h2>Correlations (Spearman rho, p, percentile bootstrap 95% CI over quants)</h2>")
    parts.append(img(paths["rho_per_variant"], "rho per variant"))
    n_var = res.correlations["variant"].nunique()
    n_fam = res.correlations["family"].nunique() if "family" in res.correlations else n_var
    parts.append(
        f"<p><i>The plot shows one row per family of rank-equivalent variants ({n_fam} families of {n_var} variants; "
        "'+k': k more members with the same ranks, listed under Variant families)"
        + (f", at most {MAX_PLOTTED_VARIANTS}: the paper's variants first, then by |rho| over the full cohort"
           if n_fam > MAX_PLOTTED_VARIANTS else "") + "; the tables list every variant.</i></p>"
    )  # fmt: skip
    parts.append(
        "<p>Beside every rho: p_bh (Benjamini-Hochberg over the variant families of that zone and target), the "
        "noise ceiling (the |rho| a perfect metric would show against this noisy target), and in a zone the "
        "cross-fitted rho (zone decided on one half of the prompts, rho measured on the other) with its own "
        "ceiling.</p>"
    )
    main_targets = [f"{k}.{COMPOSITE}" for k in ("score", "volume", "direction", "balance")]
    for tg in main_targets:
        if (res.correlations["target"] == tg).any():
            parts.append(f"<details><summary>vs {tg}</summary>" + table(_corr_frame(res.correlations, tg))
                         + "</details>")  # fmt: skip
    others = sorted(set(res.correlations["target"]) - set(main_targets))
    if others:
        parts.append(
            "<details><summary>per-task correlations</summary>"
            + "".join(f"<h4>vs {tg}</h4>" + table(_corr_frame(res.correlations, tg)) for tg in others)
            + "</details>"
        )
    parts.extend(report_top.crossfit_details(res))
    if res.flips is not None:
        vd = s["volume_direction"]
        parts.append("<h2>Volume vs direction</h2>")
        parts.append(
            "<p>Per quant and task: lost = reference passed and quant failed; gained = the reverse. "
            "volume = lost + gained; direction = gained - lost; composite = sum over tasks. Note: direction "
            "summed over a task's prompts equals n x (accuracy change) exactly (checked here: max error "
            f"{fmt(vd['direction_identity_max_abs_error'])}), so rho with direction is rho with the score "
            "change; volume is the part a fidelity number can see.</p>"
        )
        parts.append(img(paths["volume_direction"], "volume and direction"))
        cols = [c for c in res.flips.columns if c.endswith(COMPOSITE)]
        parts.append("<details><summary>per-quant flips</summary>" + table(res.flips[cols], 300) + "</details>")
    if res.failure is not None:
        fc = s["failure_prediction"]["cohort"]
        parts.append("<h2>Per-prompt failure prediction</h2>")
        rows = {
            "GM KLD ratio failed/passed (all prompts)": fc["gm_ratio"],
            "GM KLD ratio lost/kept (prompts the reference passed)": fc["gm_ratio_lost"],
            "AUROC of per-prompt KLD for failure": fc["auroc"],
            "AUROC for loss (prompts the reference passed)": fc["auroc_lost"],
        }
        f = pd.DataFrame(
            {
                k: {
                    "mean over quants": v["value"],
                    "95% CI": f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]",
                    "quants": v.get("n_quants"),
                    "min": v.get("min"),
                    "max": v.get("max"),
                }
                for k, v in rows.items()
            }
        ).T
        f.index.name = "statistic"
        parts.append(
            f"<p>Per quant, then summarised over quants (geometric mean of ratios / mean AUROC, t CI with "
            f"quants as units). Per-prompt KLD column: {html.escape(s['failure_prediction']['kld_column'])}; "
            f"pooled GM ratio over all (quant, prompt) cells: {fmt(fc['pooled_gm_ratio'])}; KLD values "
            f"floored at 1e-10: {fc['n_kld_floored']}.</p>" + table(f)
        )
        parts.append(img(paths["kld_passed_failed"], "per-prompt KLD passed vs failed"))
        parts.append(
            "<details><summary>per-quant failure prediction</summary>"
            + table(res.failure["per_quant"], 300)
            + "</details>"
        )
    parts.extend(report_top.controls_details(res))
    parts.extend(report_top.direction_details(res))
    if s["router"] is not None:
        r = s["router"]
        a, b = r["accuracy"], r["accuracy_prompt_bootstrap"]
        parts.append("<h2>Router</h2>")
        parts.append(
            f"<p>For pairs of quants, on prompts where exactly one passes, pick the one with the lower "
            f"per-prompt KLD. Accuracy <b>{fmt(a['value'])}</b> over {r['n_decisions']} decisions on "
            f"{b['n_prompts']} prompts from {r['n_pairs']} pairs ({'a seeded sample' if r['sampled'] else 'all pairs'}"
            f" of {r['n_pairs_possible']}); ties left out: {r['n_ties']}. <b>Bootstrap CI over prompts</b> "
            f"[{fmt(b['ci_low'])}, {fmt(b['ci_high'])}] ({b['n_boot']} resamples of whole prompts: pairs share "
            f"prompts, so this is the CI to read); the exact binomial CI treating every decision as independent "
            f"[{fmt(a['ci_low'])}, {fmt(a['ci_high'])}] (test vs 0.5 p={fmt(a['p'])}) is optimistic. Per-pair "
            f"accuracy: median {fmt(r['per_pair']['median'])}, 10th-90th percentile "
            f"[{fmt(r['per_pair']['p10'])}, {fmt(r['per_pair']['p90'])}]. Across "
            "quants of different damage, the lower-KLD quant is usually the less damaged one: above-chance "
            "accuracy here can reflect that, not per-prompt direction.</p>"
        )
    parts.extend(report_top.router_details(res))
    parts.extend(report_top.families_details(res))
    parts.append(f"<h2>Settings</h2><pre>{html.escape(json.dumps(s['settings'], indent=1))}</pre>")
    parts.append(f"<p>Analysis time: {s['elapsed_s']} s.</p></body></html>")
    report = out / "report.html"
    report.write_text("\n".join(parts), encoding="utf-8")
    summary = out / "summary.json"
    summary.write_text(json.dumps(s, indent=1, allow_nan=False), encoding="utf-8")
    return {"report": report, "summary": summary, **paths}
