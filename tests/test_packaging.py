"""A plain (non-editable) install works: the wheels of quantfid and its MLflow plugins, installed into a fresh
virtual environment, run `quantfid-sweep -m experiment=smoke` from an unrelated folder into MLflow, with the configs
and the organism read from the installed package, never from the checkout."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def _sources(dst: Path) -> Path:
    """The files a build reads, copied (symlinks kept), so the build leaves nothing behind in the checkout."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "conf", "mlflow_plugins"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst / name)
    return dst


@pytest.mark.slow
def test_wheel_install_runs_the_smoke_sweep_from_elsewhere(tmp_path):
    src = _sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    build = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(src / "mlflow_plugins"), str(src)], check=True, timeout=600)
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["quantfid", "quantfid_mlflow_plugins"]

    # a fresh venv whose only extra is a path entry to this venv's third-party packages (torch, mlflow, ...): the
    # editable install's .pth files there are not processed, so quantfid can only come from the wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(fresh_site, "_quantfid_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*PIP, "--python", str(python), "install", "--no-deps", *map(str, built)], check=True, timeout=600)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUANTFID_", "PYTHON"))}
    env |= {"QUANTFID_RUN_DIR": str(elsewhere / "runs"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [str(python), "-c", "import quantfid, quantfid_mlflow; from quantfid.api.paths import conf_dir, organism_dir; "
         "print(quantfid.__file__, quantfid_mlflow.__file__, conf_dir(), organism_dir(), sep='\\n')"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(fresh_site) for p in where), where
    assert not any(p.startswith(str(REPO)) for p in where), where

    done = subprocess.run(
        [str(venv / "bin" / "quantfid-sweep"), "-m", "experiment=smoke"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(elsewhere / "runs" / "mlflow.db") as con:
        rows = con.execute(
            "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'quantfid.role'"
        ).fetchall()
    roles = sorted(r for r, status in rows if status == "FINISHED")
    assert roles == ["quant", "quant", "reference", "sweep"], rows
