"""The parts of the report added for issue 12: the plain-words answer it opens with (equivalence groups, the smallest
equivalent quant, a Pareto plot of size against score, whether each fidelity-variant family can be trusted to rank
the cohort), and the detail sections behind it (equivalence evidence and power, noise ceilings and cross-fitting,
direction, failure-prediction controls, router baselines, variant families)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE
from quantfid.analysis.render import fmt, img, save, table
from quantfid.api.schema import METRIC_BITS_PER_WEIGHT, METRIC_MODEL_BYTES

VERDICT_STYLE = {"equivalent": ("#2ca02c", "o"), "indeterminate": ("#ff7f0e", "s"), "different": ("#d62728", "x")}
MAX_TRUST_ROWS = 12
FACT_LABEL = {METRIC_BITS_PER_WEIGHT: "bits per weight", METRIC_MODEL_BYTES: "model bytes"}


def plot_pareto(res, path: Path) -> Path | None:
    """Composite score against bits per weight and model bytes; marker = equivalence verdict; Pareto front drawn."""
    d = res.summary.get("decision") or {}
    facts = d.get("quant_facts") or []
    rows = d.get("quants") or []
    if not facts or not rows:
        return None
    fig, axes = plt.subplots(1, len(facts), figsize=(6.2 * len(facts), 4.6), squeeze=False)
    ref = (res.summary["cohort"].get("reference_scores") or {}).get(COMPOSITE)
    for ax, c in zip(axes[0], facts, strict=True):
        pts = [r for r in rows if r.get(c) is not None and r.get("score") is not None]
        for v, (col, mk) in VERDICT_STYLE.items():
            sel = [r for r in pts if r.get("verdict", "indeterminate") == v]
            if sel:
                ax.scatter([r[c] for r in sel], [r["score"] for r in sel], c=col, marker=mk, s=30,
                           label=f"{v} (n={len(sel)})")  # fmt: skip
        front = sorted((r for r in pts if r.get(f"pareto.{c}")), key=lambda r: r[c])
        if front:
            ax.step([r[c] for r in front], [r["score"] for r in front], where="post", color="#555", lw=0.8,
                    label="Pareto front")  # fmt: skip
            for r in front[:: max(1, len(front) // 15)]:  # at most ~15 labels
                ax.annotate(r["quant"], (r[c], r["score"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        if ref is not None:
            ax.axhline(ref, color="#444", ls="--", lw=1, label="reference")
            ax.axhspan(ref - d["delta"], ref + d["delta"], color="#2ca02c", alpha=0.08, label=f"+-delta={d['delta']}")
        if c == "quant.model_bytes" and pts and max(r[c] for r in pts) / max(min(r[c] for r in pts), 1) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(FACT_LABEL.get(c, c))
        ax.set_ylabel("composite accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")  # a fixed place: "best" searches every point (seconds at 1,000)
    fig.suptitle("Size against score; marker = equivalence verdict (smaller and better is up-left)")
    return save(fig, path)


def top_section(res, paths: dict) -> list[str]:
    """The plain-words answer: the first thing the report says."""
    s = res.summary
    d = s.get("decision") or {}
    eq = s.get("equivalence")
    out = ["<h2>The answer</h2>"]
    if eq is None:
        out.append("<p class='note'>No equivalence verdicts (see the notes).</p>")
    else:
        c, cc = eq["counts"], eq["counts_composite"]
        scope = ("the composite score and every task" if eq["scope"] == "all" else "the composite score")
        kind = "paired (Tango score) CIs" if eq["paired"] else (
            "<b>unpaired</b> score CIs: the cohort has no per-prompt outcomes, so the CI ignores that both models "
            "answered the same prompts and is wider than a paired one")  # fmt: skip
        out.append(
            f"<p><b>Which quants can replace the reference?</b> At a margin of &plusmn;{eq['delta']} accuracy "
            f"(absolute) on {scope}, judged by {kind} at {eq['level']:.0%}: <b>{c['equivalent']} equivalent</b>, "
            f"{c['different']} different, {c['indeterminate']} indeterminate (too few prompts to say), of "
            f"{sum(c.values())}. On the composite score alone: {cc['equivalent']} equivalent, {cc['different']} "
            f"different, {cc['indeterminate']} indeterminate.</p>"
        )
        sm = [(k.split("by.")[1], v) for k, v in d.items() if k.startswith("smallest_equivalent_by.") and v]
        smc = [(k.split("by.")[1], v) for k, v in d.items() if k.startswith("smallest_equivalent_composite_by.") and v]
        if sm:
            out.append("<p>Smallest equivalent quant: " + "; ".join(
                f"by {FACT_LABEL.get(k, k)}: <b>{html.escape(v)}</b>" for k, v in sm) + ".</p>")  # fmt: skip
        elif smc:
            out.append("<p>No quant is equivalent on every task; on the composite alone the smallest equivalent "
                       "is " + "; ".join(f"by {FACT_LABEL.get(k, k)}: <b>{html.escape(v)}</b>" for k, v in smc)
                       + ".</p>")  # fmt: skip
        if eq["units_below_floor"]:
            out.append(
                f"<p class='note'>The benchmark is too small to show equivalence at this margin: "
                f"{html.escape(', '.join(eq['units_below_floor']))} "
                f"{'has' if len(eq['units_below_floor']) == 1 else 'have'} fewer than {eq['zero_flip_floor']} prompts,"
                f" and below that even a quant with no flip at all has a CI wider than &plusmn;{eq['delta']}.</p>"
            )
        r = eq["resolve"]
        if r["n_indeterminate"]:
            out.append(
                f"<p>Power: to resolve the {r['n_indeterminate']} indeterminate quant(s) with {eq['power']:.0%} power "
                f"each (shown equivalent or different, if their observed difference and flip rate held), the "
                f"benchmark would need about {_x(r['factor_median'])} its prompts for half of them "
                f"({_n(r['prompts_composite_median'])} prompts in all) and {_x(r['factor_max'])} for all of them"
                f"{_n(r['prompts_composite_max'], ' (', ' prompts)')}"
                + (f"; {r['n_unresolvable']} cannot be resolved that way" if r["n_unresolvable"] else "") + ".</p>"
            )
        grp = pd.DataFrame({v: [", ".join(eq["groups"][v]) or "-"] for v in ("equivalent", "different",
                                                                              "indeterminate")}).T  # fmt: skip
        grp.columns = ["quants"]
        grp.index.name = "verdict"
        out.append(table(grp))
    if paths.get("pareto"):
        out.append(img(paths["pareto"], "size against score, equivalence marked"))
    out.extend(trust_section(res))
    out.extend(what_the_paper_statistics_measure(res))
    return out


def _x(v) -> str:
    return "n/a" if v is None else f"{v:.1f}x"


def _n(v, pre: str = "", post: str = "") -> str:
    return "" if v is None else f"{pre}{v:,.0f}{post}"


def trust_section(res) -> list[str]:
    d = res.summary.get("decision") or {}
    trust = d.get("variant_trust") or []
    if not trust:
        return []
    zones = [z for z in ("full", "silent", "paper") if any(z in t for t in trust)]
    zname = {"full": "full cohort", "silent": "silent zone (equivalent)", "paper": "paper zone (McNemar)"}
    if res.summary["silent_zone"]["method"] != "equivalence":
        zname["silent"] = f"silent zone ({res.summary['silent_zone']['method']})"
    rows = {}
    for t in trust:
        row = {"members": len(t["members"])}
        for z in zones:
            e = t.get(z)
            if not e:
                continue
            rho = e["rho_cf"] if e.get("rho_cf") is not None else e["rho"]
            ceil = e["noise_ceiling_cf"] if e.get("noise_ceiling_cf") is not None else e["noise_ceiling"]
            tag = " (cross-fitted)" if e.get("rho_cf") is not None else ""
            row[f"{zname[z]}: n"] = e["n_quants"]
            row[f"{zname[z]}: rho{tag}"] = rho
            row[f"{zname[z]}: noise ceiling"] = ceil
            row[f"{zname[z]}: verdict"] = e["verdict"]
        rows[t["family"]] = row
    f = pd.DataFrame.from_dict(rows, orient="index")
    f.index.name = "variant family (vs composite score)"
    head, rest = f.head(MAX_TRUST_ROWS), f.iloc[MAX_TRUST_ROWS:]
    out = [
        "<h3>Can a fidelity number be trusted to rank this cohort?</h3>",
        "<p>Per family of rank-equivalent variants (primary first), against the composite score. <b>ranks</b>: "
        "BH-significant and |rho| at least "
        f"{res.summary['settings']['trust_rho']:.0%} of the noise ceiling; <b>weak</b>: significant but below that; "
        "<b>fails</b>: not significant although the benchmark could show a ranking (noise ceiling at least "
        f"{res.summary['settings']['trust_ceiling']}): <i>the metric fails here</i>; <b>cannot tell</b>: not "
        "significant and the benchmark's own ranking of these quants is too noisy: <i>the benchmark is too small to "
        "tell</i>; <b>reversed</b>: significant with the opposite sign to the full cohort's; <b>too few quants</b>: "
        "under 5. In a zone the rho is cross-fitted (zone decided on one half of the prompts, measured on the "
        "other) and its ceiling is that of a half-sample score. The ceiling is itself an estimate: with few quants "
        "or few flips it is rough (a significant rho above it is possible).</p>",
        table(head),
    ]
    if len(rest):
        out.append("<details><summary>the other families</summary>" + table(rest) + "</details>")
    for t in trust[:1]:
        whys = "".join(f"<li>{html.escape(z)}: {html.escape(t[z]['verdict'])}: {html.escape(t[z]['why'])}</li>"
                       for z in zones if t.get(z))  # fmt: skip
        out.append(f"<p>Primary family <code>{html.escape(t['family'])}</code>:</p><ul>{whys}</ul>")
    return out


def what_the_paper_statistics_measure(res) -> list[str]:
    s = res.summary
    out = []
    fc, rb, fp = s.get("failure_controls"), s.get("router_baselines"), s.get("failure_prediction")
    if fc and fp:
        c = fc["cohort"]
        w = c["within_prompt"]
        g = fp["cohort"]["gm_ratio"]
        out.append(
            "<h3>What the paper's per-prompt statistics measure here</h3><ul>"
            f"<li>Failed/passed KLD ratio {fmt(g['value'])}; the same ratio between prompts the <i>reference</i> "
            f"fails and passes, which ignores the quant's outcome: {fmt(c['gm_ratio_ref_difficulty']['value'])} "
            "(prompt difficulty). Within each prompt, comparing quants that lost it with quants that kept it: "
            f"concordance {fmt(w['loss_raw']['value'])} with raw KLD (quant damage still in), "
            f"<b>{fmt(w['loss_centred']['value'])}</b> [{fmt(w['loss_centred']['ci_low'])}, "
            f"{fmt(w['loss_centred']['ci_high'])}] with each quant's KLD relative to its own median (0.5 = no "
            "per-prompt prediction): the last one measures prediction, the first ratio mostly difficulty.</li>"
        )
        all_ = rb["groups"]["all"]["all prompts"] if rb else None
        if all_ and all_["kld"]["value"] is not None:
            out.append(
                f"<li>Router: KLD {fmt(all_['kld']['value'])} [{fmt(all_['kld']['ci_low'])}, "
                f"{fmt(all_['kld']['ci_high'])}]; always picking the quant with the lower median KLD "
                f"{fmt(all_['global_kld']['value'])}; difference {fmt(all_['kld_minus_global_kld']['value'])} "
                f"(bootstrap p {fmt(all_['kld_minus_global_kld']['p'])}); the demeaned router (per-prompt "
                f"information only) {fmt(all_['demeaned']['value'])} [{fmt(all_['demeaned']['ci_low'])}, "
                f"{fmt(all_['demeaned']['ci_high'])}] (0.5 = chance).</li>"
            )
        out.append("</ul>")
    return out


# ---------------------------------------------------------------- detail sections


def equivalence_details(res) -> list[str]:
    eq = res.summary.get("equivalence")
    if not eq or res.equivalence is None:
        return []
    f = res.equivalence
    cols = [c for c in (f"lost.{COMPOSITE}", f"gained.{COMPOSITE}", f"discordance.{COMPOSITE}", f"diff.{COMPOSITE}",
                        f"ci_low.{COMPOSITE}", f"ci_high.{COMPOSITE}", f"p.{COMPOSITE}", "verdict",
                        "verdict_composite") if c in f.columns]  # fmt: skip
    t = f[cols].copy()
    pq = eq["per_quant"]
    for k in (f"mdd.{COMPOSITE}", f"n_equivalence.{COMPOSITE}", "resolve_factor_all"):
        t[k] = [pq[q].get(k) for q in t.index]
    tasks = [c[len("verdict.") :] for c in f.columns if c.startswith("verdict.") and c != f"verdict.{COMPOSITE}"]
    per_task = f[[f"verdict.{u}" for u in tasks]] if tasks else None
    per_task_html = ("<details><summary>verdict per task</summary>" + table(per_task, 1000) + "</details>"
                     if per_task is not None else "")  # fmt: skip
    return [
        "<h2>Equivalence: evidence per quant</h2>",
        f"<p>diff = (gained - lost)/n, quant minus reference; CI: {html.escape(eq['ci_method'])} at "
        f"{eq['level']:.0%}; p: score test at 0 (the asymptotic McNemar test when paired), Holm-corrected over the "
        f"quant's units for the 'different' verdict; margin &plusmn;{eq['delta']}; scope: {eq['scope']}. "
        f"mdd: the smallest difference detectable with {eq['power']:.0%} power at this quant's flip rate; "
        "n_equivalence: composite prompts needed to show equivalence at the margin with that power; "
        "resolve_factor: how many times the benchmark's size would resolve it. Per-task CIs are in summary.json "
        "(equivalence.per_quant).</p>",
        "<details><summary>composite evidence and power, every quant</summary>" + table(t, 1000) + "</details>",
        per_task_html,
    ]


def crossfit_details(res) -> list[str]:
    cf = res.summary.get("crossfit")
    nc = res.summary.get("noise_ceiling")
    out = []
    if nc:
        rows = {}
        for z, targets in nc["zones"].items():
            for t, e in targets.items():
                if t.endswith(COMPOSITE):
                    rows[(z, t)] = {"quants": e.get("n_quants"), "split-half r": e.get("split_half_r"),
                                    "reliability": e.get("reliability"),
                                    "noise ceiling": e.get("noise_ceiling")}  # fmt: skip
        f = pd.DataFrame.from_dict(rows, orient="index")
        f.index = [f"{z}: {t}" for z, t in f.index]
        f.index.name = "zone: target"
        out += ["<h2>Noise ceiling</h2>", f"<p>Method: {html.escape(nc['method'])}. The noise ceiling is the |rho| a "
                "perfect metric would be expected to show against the observed target; every correlation table below "
                "prints it beside rho. Per-task targets: summary.json (noise_ceiling).</p>", table(f)]  # fmt: skip
    if cf:
        d = pd.DataFrame(cf["rows"])
        d = d[d["target"].str.endswith(COMPOSITE) & d["rho_cf"].notna()].sort_values(["zone", "target", "variant"])
        d = d[["zone", "variant", "target", "rho_cf", "ci_low", "ci_high", "p", "p_bh", "rho_cf_p05", "rho_cf_p95",
               "n_zone_mean", "noise_ceiling_cf"]].set_index("variant")  # fmt: skip
        out += ["<h2>Cross-fitting</h2>",
                f"<p>{cf['n_splits']} seeded random halvings of every task's prompts, both directions "
                f"({cf['n_folds']} folds): the zone is decided on one half, rho measured on the other; rho_cf is the "
                f"mean over folds, p05/p95 its spread over folds, CI {html.escape(cf['ci_method'])}; n_zone_mean: the "
                "zone's mean size on half the prompts; noise_ceiling_cf: that of a half-sample target in the fold's "
                "zone. Full-sample rho: the correlation tables.</p>",
                "<details><summary>cross-fitted rho, composite targets, every variant (zones with a rho on half the "
                "prompts)</summary>" + table(d, 2000) + "</details>"]  # fmt: skip
    return out


def direction_details(res) -> list[str]:
    if res.direction is None:
        return []
    u = COMPOSITE
    cols = [f"loss_rate.{u}", f"loss_rate_ci_low.{u}", f"loss_rate_ci_high.{u}", f"gain_rate.{u}",
            f"gain_rate_ci_low.{u}", f"gain_rate_ci_high.{u}", f"gain_minus_loss.{u}", f"gain_minus_loss_ci_low.{u}",
            f"gain_minus_loss_ci_high.{u}", f"balance.{u}", f"blind_expected_direction.{u}", f"excess.{u}"]  # fmt: skip
    return [
        "<h2>Direction that is not the score</h2>",
        f"<p>{html.escape(res.summary['direction']['note'])}. A quant whose flips ignored correctness would show gain "
        "rate = loss rate; gain - loss below 0 (its CI) says the quant breaks right answers more often than it fixes "
        "wrong ones. Correlations with balance (per task and composite) are in the tables below "
        "(target balance.*).</p>",
        "<details><summary>rates, balance and excess per quant (composite; per task in summary.json)</summary>"
        + table(res.direction[cols], 1000) + "</details>",
    ]


def controls_details(res) -> list[str]:
    fc = res.summary.get("failure_controls")
    if not fc:
        return []
    c = fc["cohort"]
    rows = {
        "GM ratio reference-failed / reference-passed prompts (difficulty only)": c["gm_ratio_ref_difficulty"],
        "GM ratio lost / kept (reference passed)": c["gm_ratio_lost"],
        "GM ratio gained / stayed-failed (reference failed)": c["gm_ratio_gained"],
        "AUROC gained vs stayed-failed": c["auroc_gained"],
    }
    f = pd.DataFrame({k: {"value": v.get("value"), "CI": f"[{fmt(v.get('ci_low'))}, {fmt(v.get('ci_high'))}]",
                          "quants": v.get("n_quants")} for k, v in rows.items()}).T  # fmt: skip
    f.index.name = "control (mean over quants, t CI)"
    w = c["within_prompt"]
    g = pd.DataFrame({k: {"concordance": v["value"], "CI (prompt bootstrap)": f"[{fmt(v['ci_low'])}, "
                          f"{fmt(v['ci_high'])}]", "p (within-prompt permutation)": v["p_permutation"],
                          "prompts": v["n_prompts"], "pairs": v["n_pairs"]} for k, v in w.items()}).T  # fmt: skip
    g.index.name = "within-prompt (quants compared on the same prompt)"
    cl = c.get("conditional_logit") or {}
    cl_txt = (f"Conditional logistic regression of loss on centred log KLD with prompt strata: odds ratio per "
              f"doubling {fmt(cl.get('or_per_doubling'))} [{fmt(cl.get('or_ci_low'))}, "
              f"{fmt(cl.get('or_ci_high'))}], p {fmt(cl.get('p'))} ({cl.get('n_obs')} quant-prompt cells, "
              f"{cl.get('n_strata')} prompts"
              + (f"; {cl['subsampled_quants']} quants sampled" if cl.get("subsampled_quants") else "") + ")."
              if "or_per_doubling" in cl else f"Conditional logistic regression: {cl.get('error', 'not run')}.")
    return [
        "<h2>Failure prediction: controls</h2>",
        "<p>loss_*: among prompts the reference passed, quants that lost the prompt vs quants that kept it; gain_*: "
        "among prompts it failed, quants that gained it vs quants that stayed failed. raw: log per-prompt KLD "
        "(difficulty cancels within a prompt, quant damage does not); centred: each quant's log KLD minus its own "
        "median (damage cancels too): <b>centred measures per-prompt prediction</b>. A gain concordance above 0.5 "
        "means KLD is higher where the answer changed for the better: it tracks change, not failure.</p>",
        table(f), table(g), f"<p>{html.escape(cl_txt)}</p>",
    ]


def router_details(res) -> list[str]:
    rb = res.summary.get("router_baselines")
    if not rb:
        return []
    rows = {}
    for g, gd in rb["groups"].items():
        for subset in ("all prompts", "reference passed", "reference failed"):
            e = gd[subset]
            row = {"pairs": gd["n_pairs"], "decisions": e["n_decisions"]}
            for r in (*rb["rules"], "kld_minus_global_kld", "demeaned_minus_global_kld"):
                v = e[r]
                row[r] = f"{fmt(v['value'])} [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}] p={fmt(v['p'])}"
            rows[f"{g} / {subset}"] = row
    f = pd.DataFrame.from_dict(rows, orient="index")
    f.index.name = "pairs / prompts"
    return [
        "<h2>Router: baselines</h2>",
        "<p>Every rule on the same decisions (prompts where exactly one quant of the pair passes; a tie counts 1/2): "
        "kld = the lower per-prompt KLD; global_kld = always the quant with the lower median KLD; demeaned = the lower "
        "KLD relative to the quant's own median; global_score = always the quant with the higher accuracy (in-sample, "
        "an upper reference). CIs and p-values (vs 1/2; differences vs 0) from one bootstrap over prompts "
        f"({rb['n_boot']} resamples). zone:* = pairs with both quants in that zone.</p>",
        table(f),
    ]


def families_details(res) -> list[str]:
    vf = res.summary.get("variant_families")
    if not vf:
        return []
    items = "".join(
        f"<li><code>{html.escape(m['family'])}</code> = {html.escape(', '.join(m['members']))}"
        + (f" (reversed: {html.escape(', '.join(m['reversed']))})" if m["reversed"] else "")
        + f": {html.escape(m['reason'])}</li>"
        for m in vf["merged"]
    )
    return [
        "<h2>Variant families</h2>",
        f"<p>{vf['n_variants']} variants form {vf['n_families']} families of rank-equivalent variants (any rank "
        f"correlation is the same for every member). p_bh: {html.escape(vf['correction'])}. Merged:</p>"
        f"<ul>{items or '<li>none</li>'}</ul>",
    ]
