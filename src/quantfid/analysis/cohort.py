"""The analysis' one input shape: a cohort table (one row per quant) plus optional per-prompt outcomes.

Every source (the MLflow tracking store, a CSV, llama.cpp logs, lm-eval sample logs) is turned into a ``Cohort``, so
the statistics never know where the numbers came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantfid.api.schema import COMPOSITE, OUTCOME_KEY_COLUMNS

SCORE_PREFIX = "score."
N_PREFIX = "n."
#: The long outcome table of a cohort: the schema's key columns, per quant.
OUTCOME_COLUMNS = ("quant", *OUTCOME_KEY_COLUMNS)


class AnalysisInputError(ValueError):
    """Bad input to the analysis: the message names the field, what was wrong, and what to do."""


@dataclass
class TaskMatrix:
    """Per-prompt outcomes of one task, aligned on the reference's prompts: rows = cohort quants (table order)."""

    task: str
    prompt_ids: np.ndarray
    ref_passed: np.ndarray  # (n_prompts,) bool
    passed: np.ndarray  # (n_quants, n_prompts) bool
    kld: np.ndarray | None  # (n_quants, n_prompts) float, or None when the source has no per-prompt KLD


@dataclass
class Cohort:
    """A cohort of quants measured against one reference.

    ``table``: index = quant name; columns = fidelity variants (``variants``), ``score.<task>`` and
    ``score.composite`` (accuracy in [0, 1]), ``n.<task>`` (prompts scored). The reference, when known, is a row
    named ``reference``. ``outcomes`` (optional): long table with columns quant, task, prompt_id, passed and
    optionally kld_prompt / kld_completion.
    """

    table: pd.DataFrame
    variants: list[str]
    tasks: list[str]
    reference: str | None = None
    outcomes: pd.DataFrame | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def quants(self) -> list[str]:
        """Quant names, the reference excluded: the units every statistic is computed over."""
        return [q for q in self.table.index if q != self.reference]

    @property
    def has_outcomes(self) -> bool:
        return self.outcomes is not None and len(self.outcomes) > 0

    def validate(self) -> None:
        """One clear error per bad input instead of a NaN three functions later."""
        t = self.table
        if t.index.has_duplicates:
            dup = sorted(set(t.index[t.index.duplicated()]))[:5]
            raise AnalysisInputError(f"quant names must be unique; duplicated: {dup}. Rename or drop the duplicates.")
        if not self.variants:
            raise AnalysisInputError(
                "no fidelity variant in the cohort (no fid.* metric / metric column): nothing to correlate. "
                "Check the source has fidelity metrics."
            )
        for col in [*self.variants, *(SCORE_PREFIX + k for k in [*self.tasks, COMPOSITE])]:
            if col not in t.columns:
                raise AnalysisInputError(f"cohort table lacks column {col!r}; columns are {list(t.columns)[:20]}")
        if self.reference is not None and self.reference not in t.index:
            raise AnalysisInputError(
                f"reference {self.reference!r} is not a quant of the cohort; pass the reference row's name "
                f"(quants: {list(t.index)[:10]})"
            )
        if len(self.quants) < 3:
            raise AnalysisInputError(f"a cohort needs at least 3 quants besides the reference, got {len(self.quants)}")
        if self.has_outcomes:
            missing = [c for c in OUTCOME_COLUMNS if c not in self.outcomes.columns]
            if missing:
                raise AnalysisInputError(f"per-prompt outcomes lack column(s) {missing}")
            if self.reference is None:
                raise AnalysisInputError(
                    "per-prompt outcomes need a reference row (flips are defined against it); name it with --reference"
                )

    def kld_columns(self) -> list[str]:
        """Per-prompt KLD columns present with at least one finite value."""
        if not self.has_outcomes:
            return []
        cols = [c for c in ("kld_completion", "kld_prompt") if c in self.outcomes.columns]
        return [c for c in cols if np.isfinite(self.outcomes[c].to_numpy(float)).any()]

    def task_matrices(self, kld_column: str | None = "kld_completion") -> dict[str, TaskMatrix]:
        """Quants x prompts matrices per task, aligned on the reference's prompts.

        A quant missing prompts the reference has is an error (silently dropping prompts would bias the flips).
        """
        if not self.has_outcomes:
            raise AnalysisInputError("this cohort has no per-prompt outcomes")
        o = self.outcomes
        order = list(self.table.index)
        qpos = {q: i for i, q in enumerate(order)}
        unknown = set(o["quant"].unique()) - set(qpos)
        if unknown:
            raise AnalysisInputError(f"outcomes name quants not in the cohort table: {sorted(unknown)[:5]}")
        use_kld = kld_column if kld_column and kld_column in o.columns else None
        out: dict[str, TaskMatrix] = {}
        for task, g in o.groupby("task", sort=True):
            ref = g[g["quant"] == self.reference]
            if ref.empty:
                raise AnalysisInputError(f"task {task!r}: the reference {self.reference!r} has no per-prompt outcomes")
            prompts = np.sort(ref["prompt_id"].astype(str).unique())
            ppos = pd.Index(prompts)
            rows = g["quant"].map(qpos).to_numpy()
            cols = ppos.get_indexer(g["prompt_id"].astype(str))
            keep = cols >= 0
            passed = np.zeros((len(order), len(prompts)), dtype=bool)
            seen = np.zeros((len(order), len(prompts)), dtype=bool)
            passed[rows[keep], cols[keep]] = g["passed"].to_numpy(bool)[keep]
            seen[rows[keep], cols[keep]] = True
            present = np.isin(np.arange(len(order)), np.unique(rows))
            incomplete = present & ~seen.all(axis=1)
            if incomplete.any():
                q = order[int(np.flatnonzero(incomplete)[0])]
                raise AnalysisInputError(
                    f"task {task!r}: quant {q!r} lacks {int((~seen[qpos[q]]).sum())} of the reference's "
                    f"{len(prompts)} prompts; re-run it on the full prompt set or drop it from the cohort"
                )
            absent = [order[i] for i in np.flatnonzero(~present)]
            if absent:
                raise AnalysisInputError(
                    f"task {task!r}: quant(s) {absent[:5]} have no per-prompt outcomes; every quant needs them"
                )
            kld = None
            if use_kld is not None:
                kld = np.full((len(order), len(prompts)), np.nan)
                kld[rows[keep], cols[keep]] = g[use_kld].to_numpy(float)[keep]
            rp = passed[qpos[self.reference]].copy()
            out[str(task)] = TaskMatrix(str(task), prompts, rp, passed, kld)
        return out
