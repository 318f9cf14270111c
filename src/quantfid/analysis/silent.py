"""The silent zone: quants whose benchmark outcomes are statistically indistinguishable from the reference's.

Definitions (``method``):

- ``equivalence`` (default): per quant, the paired CI of its accuracy difference from the reference (Tango's score
  interval; the unpaired score interval without per-prompt outcomes) on the composite and every task
  (``equivalence_scope="all"``; ``"composite"``: the composite alone) decides equivalent (inside +-``delta``),
  different or indeterminate; the zone is the equivalent quants. See ``quantfid.analysis.equivalence``.
- ``mcnemar`` (the paper-style zone): per task, the exact McNemar test of the quant's per-prompt outcomes vs the
  reference's (discordant pairs: lost vs gained), p-values corrected for multiple comparisons (Holm by default, BH
  option) over the whole family of quant x task tests (``scope="all"``) or within each task (``scope="task"``). A
  quant is silent when no task differs at ``alpha``. Needs per-prompt outcomes.
- ``ci_overlap``: per task, the Wilson CIs of the quant's and the reference's accuracy overlap. Needs score and n.
- ``delta``: per task, |accuracy - reference accuracy| <= ``band``. Needs score only.

``auto`` resolves to ``equivalence``; the resolved method is recorded in the summary. The McNemar zone is also
reported beside the configured one (as zone ``paper``) whenever per-prompt outcomes exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE, N_PREFIX, SCORE_PREFIX, AnalysisInputError, Cohort, TaskMatrix
from quantfid.analysis.equivalence import DEFAULT_DELTA, SCOPES, equivalence_zone
from quantfid.analysis.stats import CORRECTIONS, adjust_pvalues, mcnemar_exact_p, wilson_ci

METHODS = ("auto", "equivalence", "mcnemar", "ci_overlap", "delta")


@dataclass(frozen=True)
class SilentZoneConfig:
    """How the silent zone is defined; every field is a CLI option and is written into summary.json."""

    method: str = "auto"
    correction: str = "holm"
    alpha: float = 0.05
    scope: str = "all"
    band: float = 0.02
    level: float = 0.95
    delta: float = DEFAULT_DELTA
    equivalence_scope: str = "all"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AnalysisInputError(f"silent-zone method={self.method!r} is not known; use one of {METHODS}")
        if self.correction not in CORRECTIONS:
            raise AnalysisInputError(f"correction={self.correction!r} is not known; use one of {sorted(CORRECTIONS)}")
        if not 0 < self.alpha < 1:
            raise AnalysisInputError(f"alpha={self.alpha} must lie in (0, 1)")
        if self.scope not in ("all", "task"):
            raise AnalysisInputError(f"scope={self.scope!r} must be 'all' or 'task'")
        if self.band < 0:
            raise AnalysisInputError(f"band={self.band} must be >= 0")
        if not 0 < self.delta < 1:
            raise AnalysisInputError(f"delta={self.delta} must lie in (0, 1): an accuracy margin such as 0.02")
        if self.equivalence_scope not in SCOPES:
            raise AnalysisInputError(f"equivalence_scope={self.equivalence_scope!r} must be one of {SCOPES}")


def silent_zone(
    cohort: Cohort, config: SilentZoneConfig, matrices: dict[str, TaskMatrix] | None = None
) -> tuple[pd.DataFrame, str]:
    """Per-quant silent-zone verdict. Returns (frame indexed by quant with a bool ``silent`` column and the
    per-task evidence, resolved method name)."""
    if cohort.reference is None:
        raise AnalysisInputError(
            "the silent zone is defined against the reference, but the cohort has none; name the reference row "
            "(--reference NAME)"
        )
    method = config.method
    if method == "auto":
        method = "equivalence"
    if method == "equivalence":
        if matrices is None and cohort.has_outcomes:
            matrices = cohort.task_matrices(kld_column=None)
        return equivalence_zone(cohort, matrices, config.delta, config.alpha, config.level,
                                config.equivalence_scope), method
    if method == "mcnemar":
        if matrices is None:
            if not cohort.has_outcomes:
                raise AnalysisInputError(
                    "silent-zone method 'mcnemar' needs per-prompt outcomes, which this cohort lacks; use "
                    "--silent-zone ci_overlap or delta"
                )
            matrices = cohort.task_matrices(kld_column=None)
        return _mcnemar_zone(cohort, config, matrices), method
    return _score_zone(cohort, config, method), method


def _mcnemar_zone(cohort: Cohort, config: SilentZoneConfig, matrices: dict[str, TaskMatrix]) -> pd.DataFrame:
    order = list(cohort.table.index)
    qidx = np.array([order.index(q) for q in cohort.quants])
    tasks = sorted(matrices)
    lost = np.stack([(m.ref_passed & ~m.passed[qidx]).sum(axis=1) for m in (matrices[t] for t in tasks)], axis=1)
    gained = np.stack([(~m.ref_passed & m.passed[qidx]).sum(axis=1) for m in (matrices[t] for t in tasks)], axis=1)
    p = mcnemar_exact_p(lost, gained)
    if config.scope == "all":
        reject, p_adj = adjust_pvalues(p.ravel(), config.correction, config.alpha)
        reject, p_adj = reject.reshape(p.shape), p_adj.reshape(p.shape)
    else:
        cols = [adjust_pvalues(p[:, j], config.correction, config.alpha) for j in range(p.shape[1])]
        reject = np.stack([c[0] for c in cols], axis=1)
        p_adj = np.stack([c[1] for c in cols], axis=1)
    frame = pd.DataFrame(index=pd.Index(cohort.quants, name="quant"))
    for j, t in enumerate(tasks):
        frame[f"lost.{t}"] = lost[:, j]
        frame[f"gained.{t}"] = gained[:, j]
        frame[f"p.{t}"] = p[:, j]
        frame[f"p_adj.{t}"] = p_adj[:, j]
    frame["min_p_adj"] = p_adj.min(axis=1)
    frame["silent"] = ~reject.any(axis=1)
    return frame


def _score_zone(cohort: Cohort, config: SilentZoneConfig, method: str) -> pd.DataFrame:
    t = cohort.table
    tasks = cohort.tasks or [COMPOSITE]
    frame = pd.DataFrame(index=pd.Index(cohort.quants, name="quant"))
    differs = np.zeros(len(cohort.quants), dtype=bool)
    for task in tasks:
        s, n = SCORE_PREFIX + task, N_PREFIX + task
        ref_acc = float(t.at[cohort.reference, s])
        acc = t.loc[cohort.quants, s].to_numpy(float)
        if method == "delta":
            d = np.abs(acc - ref_acc) > config.band
        else:
            if n not in t.columns or t[n].isna().any():
                raise AnalysisInputError(
                    f"silent-zone method 'ci_overlap' needs the number of prompts per task (column {n!r}); give n "
                    "or use --silent-zone delta --band B"
                )
            rlo, rhi = wilson_ci(
                round(ref_acc * t.at[cohort.reference, n]), int(t.at[cohort.reference, n]), config.level
            )
            cis = np.array(
                [
                    wilson_ci(round(a * k), int(k), config.level)
                    for a, k in zip(acc, t.loc[cohort.quants, n], strict=True)
                ]
            )
            frame[f"ci_low.{task}"], frame[f"ci_high.{task}"] = cis[:, 0], cis[:, 1]
            d = (cis[:, 1] < rlo) | (cis[:, 0] > rhi)
        frame[f"delta.{task}"] = acc - ref_acc
        frame[f"differs.{task}"] = d
        differs |= d
    frame["silent"] = ~differs
    return frame
