"""Where runs go: resolve the tracking URI and artifact location, and refuse a store that cannot be used.

The checks run before any model work (the sweep calls them from its Hydra callback), so a typo in a server address or
a read-only folder costs a second, not a quantization.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

try:
    from quantfid_mlflow.casuri import BLOB_DIR, cas_uri_to_path
except ImportError as err:  # its own distribution (mlflow_plugins/), installed beside quantfid
    raise ImportError(
        "quantfid's MLflow plugins are not installed: run `pip install ./mlflow_plugins` in the quantfid checkout "
        "(scripts/setup.sh does it)"
    ) from err

ENV_URI = "MLFLOW_TRACKING_URI"
REACH_TIMEOUT_S = 5.0


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names the URI, what is wrong and what to do."""


@dataclass(frozen=True)
class Store:
    """A resolved store: tracking URI, experiment name, and the artifact location for a new experiment."""

    uri: str
    experiment: str
    artifact_location: str | None


def default_uri(run_dir: str | os.PathLike) -> str:
    """The default local store: MLflow's sqlite store under the project's run folder (no server needed)."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def resolve_store(
    uri: str | None, run_dir: str | os.PathLike, experiment: str, artifact_location: str | None = None
) -> Store:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the sqlite store under ``run_dir``.

    For a local sqlite store without an explicit artifact location, artifacts go to the content-addressed
    repository under ``<run_dir>/mlartifacts`` (identical artifacts stored once). A server picks its own location.
    """
    uri = uri or os.environ.get(ENV_URI) or default_uri(run_dir)
    if artifact_location is None and uri.startswith("sqlite:"):
        artifact_location = f"cas://{Path(run_dir).resolve() / 'mlartifacts'}"
    return Store(uri=uri, experiment=experiment, artifact_location=artifact_location)


def _check_writable_dir(directory: Path, what: str, uri: str) -> None:
    """Create ``directory`` and write a probe file in it: a real write, so it holds for root as for anyone."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".quantfid-write-probe-"):
            pass
    except OSError as err:
        raise StoreError(
            f"tracking store {uri!r}: no write permission on the {what} folder {str(directory)!r} ({err.strerror}). "
            "Point tracking.uri / tracking.artifact_location (or run_dir) at a folder you can write, or fix its "
            "permissions."
        ) from err


def _check_sqlite(uri: str) -> None:
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise StoreError(f"tracking store {uri!r}: write sqlite:////absolute/path/mlflow.db (a file the runs share)")
    db = Path(path)
    _check_writable_dir(db.parent, "sqlite database", uri)
    if db.exists() and not os.access(db, os.W_OK):
        raise StoreError(f"tracking store {uri!r}: the database file {str(db)!r} is read-only; fix its permissions")
    if db.exists():
        try:
            with open(db, "r+b"):
                pass
        except OSError as err:
            raise StoreError(
                f"tracking store {uri!r}: cannot open {str(db)!r} for writing ({err.strerror}); fix its permissions"
            ) from err


def _check_http(uri: str) -> None:
    """GET ``<uri>/health`` (answered without credentials); a refused or silent address fails in seconds."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=REACH_TIMEOUT_S) as resp:
            if resp.status != 200:
                raise StoreError(f"tracking server {uri!r} answered {resp.status} on /health; is it an MLflow server?")
    except urllib.error.HTTPError as err:
        raise StoreError(
            f"tracking server {uri!r} answered {err.code} on /health; is it an MLflow server (mlflow server ...)?"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StoreError(
            f"tracking server {uri!r} is unreachable ({reason}). Start it (scripts/team_server.sh start) or fix "
            f"tracking.uri / ${ENV_URI}."
        ) from err


def check_store(store: Store) -> None:
    """Fail fast, before any model work, when the store cannot be reached or written."""
    scheme = urlparse(store.uri).scheme
    if scheme == "sqlite":
        _check_sqlite(store.uri)
    elif scheme in ("http", "https"):
        _check_http(store.uri)
    elif scheme in ("postgresql", "postgresql+psycopg2", "mysql", "mssql") or scheme.startswith("postgresql+"):
        pass  # a database store: checked by connecting when the experiment is set up
    elif scheme in ("", "file"):
        raise StoreError(
            f"tracking store {store.uri!r}: MLflow 3 refuses the plain file store; use sqlite:////abs/path/mlflow.db "
            "(the default under run_dir) or a server URL"
        )
    else:
        raise StoreError(f"tracking store {store.uri!r}: unknown scheme {scheme!r}; use sqlite:///..., http(s)://...")
    loc = store.artifact_location
    if loc and (loc.startswith("cas://") or loc.startswith("file://") or loc.startswith("/")):
        path = cas_uri_to_path(loc) if loc.startswith("cas://") else Path(urlparse(loc).path)
        _check_writable_dir(path, "artifact", store.uri)


@contextlib.contextmanager
def _sqlite_init_lock(uri: str):
    """Serialise the first connection to a sqlite store across processes on this host: MLflow creates and migrates
    the schema on first use, and two sweeps doing it at once fail (``table _alembic_tmp_experiments already
    exists``, measured)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri[len("sqlite:///") :] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def setup_experiment(store: Store) -> str:
    """Point MLflow at the store and get or create the experiment; returns its id."""
    with _sqlite_init_lock(store.uri):
        return _setup_experiment(store)


def _setup_experiment(store: Store) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(store.uri)
    client = mlflow.MlflowClient(store.uri)
    try:
        exp = client.get_experiment_by_name(store.experiment)
        if exp is not None:
            return exp.experiment_id
        if store.artifact_location and store.artifact_location.startswith("cas://"):
            (cas_uri_to_path(store.artifact_location) / BLOB_DIR).mkdir(parents=True, exist_ok=True)
        try:
            return client.create_experiment(store.experiment, artifact_location=store.artifact_location)
        except MlflowException:  # another worker created it between the lookup and now
            exp = client.get_experiment_by_name(store.experiment)
            if exp is None:
                raise
            return exp.experiment_id
    except MlflowException as err:
        raise StoreError(f"tracking store {store.uri!r}: {err.message}") from err
