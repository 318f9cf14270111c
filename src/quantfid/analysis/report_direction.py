"""The report's section on the pre-registered comparison of the direction-aware metrics with KLD (summary.json
``direction_vs_kld``; docs/analysis.md, "Direction-aware metrics against KLD: pre-registration")."""

from __future__ import annotations

import html

import pandas as pd

from quantfid.analysis.render import fmt, table


def _ci(frame: pd.DataFrame) -> list[str]:
    return [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)]


def direction_vs_kld_section(summary: dict) -> list[str]:
    """HTML: per metric, beats KLD / no evidence / worse, with D, its CI, p (raw, Holm) and the noise ceiling."""
    sec = summary.get("direction_vs_kld")
    if not sec:
        return []
    z = sec["zone"]
    out = [
        "<h2>Direction-aware metrics against KLD (pre-registered)</h2>",
        f"<p>Zone: {html.escape(z['rule'])} at delta {fmt(z['delta'])}: {z['n_quants']} quants. Baseline: "
        f"<code>{html.escape(sec['baseline'])}</code>. Cohort level: D = |rho(metric, score)| - |rho(KLD, score)|, "
        "cross-fitted (zone on one half of the prompts, score on the other), CI and p from a bootstrap over quants "
        f"and prompts; Holm over the direction metrics at alpha {fmt(sec['alpha'])}; the controls (volume only) are "
        "reported uncorrected. A D near 0 with a low noise ceiling means the benchmark cannot tell.</p>",
    ]
    coh = pd.DataFrame(sec["cohort"])
    if len(coh):
        coh["95% CI"] = _ci(coh)
        coh = coh.set_index("metric")[["verdict", "d", "95% CI", "p", "p_holm", "abs_rho_metric_cf", "abs_rho_kld_cf",
                                       "n_zone_mean", "noise_ceiling_cf", "in_holm_family"]]  # fmt: skip
        out.append(table(coh))
    if sec.get("not_measured"):
        out.append(f"<p>Not measured in this cohort: {html.escape(', '.join(sec['not_measured']))}.</p>")
    prm = pd.DataFrame(sec["prompt"])
    if len(prm):
        prm["95% CI"] = _ci(prm)
        prm = prm.set_index(["metric", "outcome"])[["verdict", "d", "95% CI", "p", "p_holm", "auroc_metric",
                                                    "auroc_kld", "n_cells", "n_events", "control"]]  # fmt: skip
        out.append("<p>Prompt level, zone quants: AUROC(metric) - AUROC(per-prompt KLD) for losses among "
                   "reference-passed prompts and gains among reference-failed ones (paired bootstrap over "
                   "prompts).</p>" + table(prm))  # fmt: skip
    truth = sec.get("truth")
    if truth and truth.get("rows"):
        t = pd.DataFrame(truth["rows"])
        t["95% CI"] = _ci(t)
        t = t.set_index("metric")[["verdict", "d", "95% CI", "p", "p_holm", "abs_rho_metric", "abs_rho_kld"]]
        out.append(f"<p>Against the ground-truth scores ({truth['n_quants']} zone quants on the large fresh "
                   "draw):</p>" + table(t))  # fmt: skip
    return out
