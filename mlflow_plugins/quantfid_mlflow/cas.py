"""Content-addressed artifact repository (URI scheme ``cas``): each distinct file is stored once.

Layout under a CAS root (a directory holding ``.cas/``)::

    <root>/.cas/sha256/<2 hex>/<64 hex>            one read-only blob per distinct content
    <root>/<experiment or run path>/artifacts/...  hard links to those blobs

Because every artifact path is a hard link, listing and downloading are those of MLflow's local repository (the
inherited code), and any tool that reads the folder sees ordinary files; the bytes of identical artifacts (the
reference outcome table every sweep logs, reference caches) are on disk once. ``find <root> -links +1`` shows what is
shared. The root is the nearest ancestor of the artifact directory that holds ``.cas/``; when there is none, the
experiment folder (or the given folder for a proxy destination) becomes one.

Use it client-side with an experiment artifact location ``cas:///abs/path``, or on a team server with
``mlflow server --serve-artifacts --artifacts-destination cas:///abs/path`` (the proxy writes through it).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from quantfid_mlflow.casuri import BLOB_DIR, SCHEME, CasUriError, cas_uri_to_path, sha256_file

__all__ = [
    "BLOB_DIR",
    "SCHEME",
    "CasUriError",
    "ContentAddressedArtifactRepository",
    "cas_uri_to_path",
    "sha256_file",
]

_log = logging.getLogger(__name__)


def find_cas_root(artifact_dir: Path) -> Path:
    """Nearest ancestor holding ``.cas/``; else the experiment folder of a run path, else ``artifact_dir`` itself."""
    for candidate in (artifact_dir, *artifact_dir.parents):
        if (candidate / BLOB_DIR).is_dir():
            return candidate
    # MLflow lays runs out as <experiment location>/<run id>/artifacts: share blobs across the experiment's runs.
    if artifact_dir.name == "artifacts" and len(artifact_dir.parents) >= 2:
        return artifact_dir.parents[1]
    return artifact_dir


class ContentAddressedArtifactRepository(LocalArtifactRepository):
    """MLflow's local repository with the write path replaced by store-blob-once-then-hard-link."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        path = cas_uri_to_path(artifact_uri)
        self._artifact_dir = str(path)
        self.cas_root = find_cas_root(path)
        self.blob_root = self.cas_root / BLOB_DIR / "sha256"

    def blob_path(self, digest: str) -> Path:
        return self.blob_root / digest[:2] / digest

    def _store_blob(self, staged: str) -> Path:
        """Move ``staged`` into the blob store under its digest (or drop it if that content is already there)."""
        digest = sha256_file(staged)
        blob = self.blob_path(digest)
        if blob.exists():
            os.remove(staged)
            return blob
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_name(f"{digest}.{uuid.uuid4().hex}.tmp")
        shutil.move(staged, tmp)  # a rename on one filesystem
        os.chmod(tmp, 0o444)
        os.replace(tmp, blob)  # two writers of the same content: either rename wins, both are the same bytes
        return blob

    def _publish_staged_artifact(self, temp_file_path, destination_file_path, finalize_temp_path=None) -> None:
        # Every write path of the local repository (file, stream, async stream) ends here.
        if finalize_temp_path is not None:
            finalize_temp_path(temp_file_path)
        blob = self._store_blob(temp_file_path)
        link_tmp = f"{destination_file_path}.{uuid.uuid4().hex}.cas-link"
        try:
            os.link(blob, link_tmp)
        except OSError as err:  # another filesystem or no hard links: still correct, just not shared
            _log.warning("cas: cannot hard-link %s (%s); storing a copy", blob, err)
            shutil.copyfile(blob, link_tmp)
        os.replace(link_tmp, destination_file_path)

    def log_artifacts(self, local_dir, artifact_path=None) -> None:
        base = Path(local_dir)
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel_dir = path.parent.relative_to(base).as_posix()
            dest = "/".join(x for x in (artifact_path, rel_dir if rel_dir != "." else None) if x)
            self.log_artifact(str(path), dest or None)

    def _download_file(self, remote_file_path, local_path) -> None:
        # Blobs are read-only; a download is the user's to edit, so copy the bytes, not the mode.
        src = self.get_local_path(remote_file_path)
        shutil.copyfile(src, local_path)
