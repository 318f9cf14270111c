"""`hydra/launcher=ray`: the real CLI runs the sweep's jobs as Ray tasks on a local Ray it starts and stops itself."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_rows, run_sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None or importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
        reason="ray / hydra-ray-launcher not installed (scripts/setup.sh installs both)",
    ),
]

JOBS = """
select r.run_uuid, t.value from runs r join tags t on t.run_uuid = r.run_uuid
where t.key = 'mlflow.runName' and r.status = 'FINISHED' and r.lifecycle_stage = 'active'
and r.run_uuid in (select run_uuid from tags where key = 'quantfid.role' and value in ('quant', 'reference'))
"""
PARENTS = """
select distinct p.status, pt.value from tags t join runs p on p.run_uuid = t.value
join tags pt on pt.run_uuid = p.run_uuid and pt.key = 'quantfid.role' where t.key = 'mlflow.parentRunId'
"""


def _pids_marked(marker: str) -> list[int]:
    """Live processes whose environment carries this test's own RAY_TMPDIR: Ray's raylet, GCS and workers inherit it.

    Matching on the environment (not on a process name) finds only the Ray this test started, never another one.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != "Z" and f"RAY_TMPDIR={marker}".encode() in env.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def ray_tmpdir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Ray's temp dir inside tmp_path, reached through a short link (Ray's AF_UNIX socket paths must stay < 108 bytes).

    Yields (the RAY_TMPDIR value, the real directory); afterwards nothing of this Ray may be left running.
    """
    real = tmp_path / "ray"
    real.mkdir()
    short = Path(tempfile.mkdtemp(prefix="qfray-"))
    link = short / "t"
    link.symlink_to(real)
    try:
        yield str(link), real
    finally:
        leftover = _pids_marked(str(link))
        for pid in leftover:  # only processes carrying this test's unique marker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(short)
        assert not leftover, f"Ray processes left running after the test: {leftover}"


def test_ray_launcher_runs_jobs_as_ray_tasks(tiny_model, tmp_path, ray_tmpdir):
    marker, ray_dir = ray_tmpdir
    run_dir = tmp_path / "runs"
    args = ["-m", "experiment=smoke", "hydra/launcher=ray", "quant=reference,rtn_w8_g128"]
    res = run_sweep([*args, f"model.name_or_path={tiny_model}"], run_dir, timeout=240, RAY_TMPDIR=marker)
    out = res.stdout + res.stderr
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 finished, 0 skipped (already FINISHED or claimed), 0 failed" in out

    # the store: both jobs FINISHED, children of the one sweep run, itself FINISHED
    jobs = dict(run_rows(run_dir / "mlflow.db", JOBS))
    assert sorted(jobs.values()) == ["reference@code.128", "rtn_w8_g128@code.128"]
    assert run_rows(run_dir / "mlflow.db", PARENTS) == [("FINISHED", "sweep")]

    # Ray ran them: one session under our temp dir, and each job's own log line (with its MLflow run id) is in the
    # log of a Ray worker process, not in the driver's
    sessions = [p for p in (ray_dir / "ray").glob("session_2*") if p.is_dir()]
    assert len(sessions) == 1, sorted(p.name for p in (ray_dir / "ray").iterdir())
    logs = sessions[0] / "logs"
    (driver_log,) = logs.glob("python-core-driver-*.log")
    driver_pid = int(driver_log.stem.rsplit("_", 1)[1])
    worker_of: dict[str, int] = {}
    for log in (p for p in logs.glob("worker-*") if p.suffix in (".out", ".err")):
        text = log.read_text(errors="replace")
        for run_id in re.findall(r"\] - finished \S+ in [\d.]+ s \(run ([0-9a-f]{32})\)", text):
            worker_of[run_id] = int(log.stem.rsplit("-", 1)[1])
    assert set(worker_of) == set(jobs), (worker_of, jobs)
    assert driver_pid not in worker_of.values()
    # each job is a Hydra job the Ray launcher numbered (it sets hydra.job.id; joblib and the basic launcher do not)
    job_ids = sorted(re.search(r"\n    id: (\S+)\n", p.read_text())[1] for p in run_dir.rglob(".hydra/hydra.yaml"))
    assert job_ids == ["job_id_for_0", "job_id_for_1"]

    # Ray is shut down with the CLI: no raylet / GCS / worker of this session outlives it
    deadline = time.monotonic() + 15
    while _pids_marked(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _pids_marked(marker)
