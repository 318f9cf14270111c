"""``cas`` URI helpers with no MLflow import (MLflow loads the repository plugin while it is itself importing)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

SCHEME = "cas"
BLOB_DIR = ".cas"
_CHUNK = 1 << 20


class CasUriError(ValueError):
    """A ``cas`` URI that does not name an absolute local folder."""


def cas_uri_to_path(uri: str) -> Path:
    """``cas:///abs/path`` (MLflow may shorten it to ``cas:/abs/path``) -> ``/abs/path``; a host part is refused."""
    parsed = urlparse(uri)
    if parsed.scheme != SCHEME:
        raise CasUriError(f"artifact URI {uri!r} is not a {SCHEME}:// URI")
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise CasUriError(f"artifact URI {uri!r}: write cas:///absolute/path (three slashes, a local absolute path)")
    return Path(unquote(parsed.path))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
