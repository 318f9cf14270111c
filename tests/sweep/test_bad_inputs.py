"""Issue 16's bad-input list: each case is refused before the first run with exit 2, one line naming the job and the
field, and an untouched store (no sqlite file, or one without runs) and no caches.

The cases run in-process through the console entry point (``quantfid.sweep.app.cli``: Hydra, the callback, the
preflight, exactly as the script runs them) to share one import of torch/transformers/MLflow; one case goes through
the real ``quantfid-sweep`` console script in a subprocess.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
import torch
from helpers import copy_model, run_sweep
from safetensors.torch import load_file, save_file

SMOKE = ["-m", "experiment=smoke"]


def _store_untouched(run_dir: Path) -> None:
    db = run_dir / "mlflow.db"
    if db.exists():  # MLflow may create the schema on connect; nothing may be in it
        with sqlite3.connect(db) as con:
            tables = {t for (t,) in con.execute("select name from sqlite_master where type='table'")}
            if "runs" in tables:
                assert con.execute("select count(*) from runs").fetchone()[0] == 0
            if "experiments" in tables:
                names = [n for (n,) in con.execute("select name from experiments")]
                assert names in ([], ["Default"]), names
    assert not (run_dir / "mlartifacts").exists() or not any((run_dir / "mlartifacts").rglob("*.parquet"))
    assert not (run_dir / "cache").exists(), "caches written before the refusal"
    assert not list(run_dir.rglob("outcomes.parquet"))


def _cli(args: list[str], run_dir: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``quantfid-sweep <args>`` in this process; returns (exit status, stderr)."""
    from quantfid.sweep import app

    monkeypatch.setenv("QUANTFID_RUN_DIR", str(run_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for k in ("MLFLOW_TRACKING_URI", "QUANTFID_SWEEP"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "argv", ["quantfid-sweep", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        app.cli()
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def broken_models(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    nan = copy_model(tiny_model, root / "nan")
    weights = nan / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if "layers.0" in k and k.endswith("weight") and tensors[k].ndim == 2)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    truncated = copy_model(tiny_model, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"nan": nan, "truncated": truncated}


CASES = {
    "quant_bits_17": (["quant=rtn_w4_g128", "quant.bits=17"], ["job #0", "quant.bits"]),
    "quant_group_size_100": (["quant=rtn_w4_g128", "quant.group_size=100"], ["job #0", "quant.group_size=100"]),
    # allowed by the schema, but wider than the tiny model's 128-wide layers: caught against the model's shapes
    "group_size_wider_than_layers": (["quant=rtn_w4_g128", "quant.group_size=256"], ["quant.group_size=256", "128"]),
    "missing_model_path": (["model.name_or_path=/no/such/model"], ["model.name_or_path='/no/such/model'"]),
    "dtype_float8": (["model.dtype=float8"], ["model.dtype='float8'"]),
    "cuda_without_cuda": (["model.device=cuda"], ["model.device='cuda'", "no CUDA device"]),
    "context_100000": (["fidelity.context=100000"], ["fidelity.context=100000", "max_position_embeddings"]),
    "unknown_corpus": (["fidelity.corpus=klingon"], ["fidelity.corpus='klingon'"]),
    "max_tokens_10": (["fidelity.max_tokens=10"], ["fidelity.max_tokens=10"]),
    "unknown_task": (["bench.tasks=[organism/nope]"], ["bench.tasks", "organism/nope"]),
    "bench_limit_negative": (["bench.limit=-5"], ["bench.limit=-5"]),
    "unknown_quants": (["quant=nope1,nope2"], ["job #0", "quant=nope1", "nope1"]),
    "launcher_n_jobs_0": (["hydra/launcher=parallel", "hydra.launcher.n_jobs=0"], ["hydra.launcher.n_jobs=0"]),
    "perf_new_tokens_0": (["perf.new_tokens=0"], ["perf.new_tokens=0"]),
    "direction_n_per_task_0": (["direction.n_per_task=0"], ["direction.n_per_task=0"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_the_first_run(case, tiny_model, tmp_path, monkeypatch, capsys):
    args, needles = CASES[case]
    if case == "cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = [] if any(a.startswith("model.name_or_path") for a in args) else [f"model.name_or_path={tiny_model}"]
    run_dir = tmp_path / "runs"
    code, err = _cli([*SMOKE, *model, *args], run_dir, monkeypatch, capsys)
    assert code == 2, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in err
    _store_untouched(run_dir)


@pytest.mark.parametrize(
    ("kind", "needle"), [("nan", "non-finite weights"), ("truncated", "the reference cannot be loaded")]
)
def test_a_broken_reference_is_refused_naming_the_model(kind, needle, broken_models, tmp_path, monkeypatch, capsys):
    path = broken_models[kind]
    run_dir = tmp_path / "runs"
    code, err = _cli([*SMOKE, f"model.name_or_path={path}"], run_dir, monkeypatch, capsys)
    assert code == 2, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and f"model.name_or_path='{path}'" in errors[0] and needle in errors[0], err[-2000:]
    assert "quant=" not in errors[0]  # the reference is named as the broken one, not a quant
    _store_untouched(run_dir)


def test_the_console_script_exits_2_before_any_run(tiny_model, tmp_path):
    """The real `quantfid-sweep` script: a bad bench.limit in the third of three jobs stops all of them."""
    run_dir = tmp_path / "runs"
    res = run_sweep([*SMOKE, f"model.name_or_path={tiny_model}", "bench.limit=3,3,-5"], run_dir, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "bench.limit=-5" in errors[0] and "job #" in errors[0], res.stderr[-2000:]
    assert "Launching" not in res.stdout + res.stderr
    _store_untouched(run_dir)


def test_a_task_without_calibration_prompts_is_refused_when_direction_is_on(tiny_model, tmp_path, monkeypatch, capsys):
    """A one-prompt JSONL task has no calibration prompts: with direction.enabled every job would fail, so the
    preflight refuses it, naming the field and the way out."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text("schema: 1\nname: tiny\nversion: 1\nsource:\n  type: jsonl\n  path: tiny.jsonl\n"
                                     "scoring:\n  type: exact\n")  # fmt: skip
    (tasks / "tiny.jsonl").write_text('{"id": "0", "prompt": "1 + 1 =", "answer": "2"}\n')
    monkeypatch.setenv("QUANTFID_TASK_PATH", str(tasks))
    run_dir = tmp_path / "runs"
    args = [*SMOKE, f"model.name_or_path={tiny_model}", "bench.tasks=[tiny]"]
    code, err = _cli(args, run_dir, monkeypatch, capsys)
    assert code == 2, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "direction.enabled=true" in errors[0] and "'tiny'" in errors[0], err[-2000:]
    assert "direction.enabled=false" in errors[0]
    _store_untouched(run_dir)
