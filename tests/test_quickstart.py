"""docs/quickstart-own-model.md works as written: every ``bash`` block, in order, in an empty folder, with the installed
console scripts; the report it promises exists at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quickstart-own-model.md"

pytestmark = pytest.mark.slow


def doc_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the quickstart's steps are its bash blocks"
    return blocks


def test_quickstart_commands_run_from_an_empty_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUANTFID_"))}
    bin_dir = str(Path(sys.executable).parent)  # the venv's python and its console scripts come first
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for block in doc_commands():
        cmd = ["bash", "-euo", "pipefail", "-c", block]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{block}\n---\n{res.stderr[-3000:]}"
    assert (tmp_path / "my-report" / "report.html").stat().st_size > 0
    out = subprocess.run(
        [sys.executable, "-c", "import mlflow; c = mlflow.MlflowClient('sqlite:///runs/mlflow.db'); "
         "e = c.get_experiment_by_name('my-model'); "
         "print(sorted({r.data.params.get('fidelity.corpus') for r in c.search_runs([e.experiment_id], "
         "\"tags.`quantfid.role` = 'quant'\")}))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.stdout.strip() == "['mytext']", out.stderr[-2000:]
