"""Atomic writes: a cache file is either complete or absent, never half written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported by the caller that has a frame to write
    import pandas as pd


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` to a temporary file beside ``path`` and rename it into place (atomic on one filesystem), so a
    worker killed mid-write leaves nothing that a concurrent reader or the next run could trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
