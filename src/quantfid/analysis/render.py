"""HTML and figure helpers shared by the report's sections (quantfid.analysis.report, .report_top)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return html.escape(str(v))

def log_axis(ax, values: np.ndarray) -> None:
    v = values[np.isfinite(values)]
    if len(v) and (v > 0).all() and v.max() / v.min() > 30:
        ax.set_xscale("log")

def save(fig, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (matplotlib keeps every open figure otherwise)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}" style="max-width:100%">'

def table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    f = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [f.index.name or "", *f.columns])
    body = "".join(
        "<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>"
        for i, r in zip(f.index, f.itertuples(index=False), strict=True)
    )
    more = f"<p><i>{len(frame) - len(f)} more rows in summary.json</i></p>" if len(f) < len(frame) else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"
