"""Volume vs direction: how much a quant disagrees with the reference, and which way.

Per quant and task: lost = reference passed, quant failed; gained = reference failed, quant passed.
volume = lost + gained (how many answers moved); direction = gained - lost (net effect). Composite = sum over tasks.
Identity: direction summed over a task's prompts equals n x (quant accuracy - reference accuracy) exactly, so
"direction" measured as net flips *is* the score change; the informative split is volume vs direction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantfid.analysis.cohort import COMPOSITE, TaskMatrix


def flip_counts(reference: np.ndarray, quant: np.ndarray) -> tuple[int, int]:
    """(lost, gained) of one quant's outcomes vs the reference's on the same prompts (both bool arrays)."""
    ref = np.asarray(reference, bool)
    q = np.asarray(quant, bool)
    return int((ref & ~q).sum()), int((~ref & q).sum())


def volume_direction(quants: list[str], order: list[str], matrices: dict[str, TaskMatrix]) -> pd.DataFrame:
    """Per-quant frame with lost/gained/volume/direction/n/delta_acc per task and ``composite`` sums."""
    qidx = np.array([order.index(q) for q in quants])
    frame = pd.DataFrame(index=pd.Index(quants, name="quant"))
    tot_lost = np.zeros(len(quants), dtype=np.int64)
    tot_gained = np.zeros(len(quants), dtype=np.int64)
    n_total = 0
    for task in sorted(matrices):
        m = matrices[task]
        q = m.passed[qidx]
        lost = (m.ref_passed & ~q).sum(axis=1)
        gained = (~m.ref_passed & q).sum(axis=1)
        n = len(m.prompt_ids)
        frame[f"lost.{task}"] = lost
        frame[f"gained.{task}"] = gained
        frame[f"volume.{task}"] = lost + gained
        frame[f"direction.{task}"] = gained - lost
        frame[f"delta_acc.{task}"] = q.mean(axis=1) - m.ref_passed.mean()
        tot_lost += lost
        tot_gained += gained
        n_total += n
    frame[f"lost.{COMPOSITE}"] = tot_lost
    frame[f"gained.{COMPOSITE}"] = tot_gained
    frame[f"volume.{COMPOSITE}"] = tot_lost + tot_gained
    frame[f"direction.{COMPOSITE}"] = tot_gained - tot_lost
    frame[f"n.{COMPOSITE}"] = n_total
    return frame


def direction_identity_error(frame: pd.DataFrame, matrices: dict[str, TaskMatrix]) -> float:
    """Max |direction - n x delta_acc| over quants and tasks: 0 up to float rounding (checked, and reported)."""
    err = 0.0
    for task, m in matrices.items():
        n = len(m.prompt_ids)
        err = max(err, float(np.max(np.abs(frame[f"direction.{task}"] - n * frame[f"delta_acc.{task}"]))))
    return err
