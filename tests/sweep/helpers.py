"""Shared pieces of the sweep and tracking tests: a tiny real model on disk and a runner for the real CLI."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from quantfid.data import tasks
from quantfid.models.random import save_random_llama

REPO = Path(__file__).resolve().parents[2]
SWEEP_BIN = str(Path(sys.executable).with_name("quantfid-sweep"))


def build_tiny_model(out: Path) -> Path:
    """A random 2-layer LlamaForCausalLM with a BPE trained on task prompts: any model will do for the wiring."""
    texts = [i.prompt + i.answer for f in tasks.FAMILIES for i in tasks.heldout_set(f, 40)]
    return save_random_llama(
        out,
        texts * 3,
        vocab_size=320,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )


def sweep_env(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUANTFID_"))}
    env.update({"QUANTFID_RUN_DIR": str(run_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_sweep(args: list[str], run_dir: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """The installed `quantfid-sweep` console script, in a subprocess, as a user runs it."""
    return subprocess.run(
        [SWEEP_BIN, *args],
        cwd=REPO,
        env=sweep_env(run_dir, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the sqlite store directly (an independent view of what MLflow wrote)."""
    with sqlite3.connect(db) as con:
        return con.execute(sql, params).fetchall()


FINISHED_BY_IDENTITY = """
select t.value, count(*) from runs r join tags t on t.run_uuid = r.run_uuid
where t.key = 'quantfid.run_identity' and r.status = 'FINISHED' and r.lifecycle_stage = 'active'
group by t.value
"""


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
