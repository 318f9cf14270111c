"""One real team server (PostgreSQL + `mlflow server` with basic auth and the artifact proxy) for every team-mode test
of the session: started once from the project's own script module, stopped at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quantfid.tracking import team


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if shutil.which("pg_ctl") is None and not any(Path(d, "pg_ctl").exists() for d in team.PG_BIN_DIRS):
        pytest.fail("PostgreSQL is not installed: run scripts/install_system_deps.sh (CI installs it)")
    d = tmp_path_factory.mktemp("team")
    state = team.start(d, workers=1)
    yield state
    team.stop(d)
    assert not (d / team.STATE).exists()
