"""Run identity, flattened params and metric names: the pieces of the schema that need no store."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from quantfid.tracking.identity import model_source_fingerprint, run_identity, semantic_config
from quantfid.tracking.runs import OUTCOME_COLUMNS, bench_metrics, conform_outcomes, flatten, params_for, task_key


def _cfg(model_dir, **over):
    base = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "device": "cpu"},
        "quant": {"name": "rtn_w4_g32", "backend": "rtn", "bits": 4, "group_size": 32},
        "fidelity": {"corpus": "code", "context": 128},
        "bench": {"tasks": ["organism/arith"], "limit": 3},
        "run_dir": "/somewhere",
        "tracking": {"uri": "sqlite:////a/mlflow.db", "experiment": "x"},
    }
    for k, v in over.items():
        node = base
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return OmegaConf.create(base)


@pytest.fixture()
def model_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    return d


def test_identity_ignores_where_and_how(model_dir):
    a = run_identity(_cfg(model_dir))
    assert a == run_identity(_cfg(model_dir, run_dir="/elsewhere"))
    assert a == run_identity(_cfg(model_dir, **{"tracking.uri": "http://127.0.0.1:5000"}))
    assert "tracking" not in semantic_config(_cfg(model_dir)) and "run_dir" not in semantic_config(_cfg(model_dir))


@pytest.mark.parametrize(
    "change", [{"quant.bits": 3}, {"quant.group_size": 64}, {"fidelity.context": 256}, {"bench.limit": 4}]
)
def test_identity_changes_with_what_determines_the_numbers(model_dir, change):
    assert run_identity(_cfg(model_dir)) != run_identity(_cfg(model_dir, **change))


def test_identity_follows_the_model_files_not_just_the_name(model_dir):
    before = run_identity(_cfg(model_dir))
    (model_dir / "model.safetensors").write_bytes(b"\x01" * 64)  # retrained weights, same path
    assert run_identity(_cfg(model_dir)) != before
    # a hub id is identified by id and revision
    assert model_source_fingerprint("Qwen/Qwen3-0.6B") != model_source_fingerprint("Qwen/Qwen3-0.6B", "abc")


def test_flatten_and_params_follow_the_schema():
    job = {
        "model": {"name_or_path": "organism", "dtype": "float32"},
        "quant": {"backend": "rtn", "bits": 4, "overrides": {"*.mlp.*": 3}, "skip": ["lm_head"]},
        "fidelity": {"corpus": "code", "context": 256, "variants": {"names": ["kld_mean@code.256"]}},
        "run_dir": "x",
    }
    flat = flatten(job)
    assert json.loads(flat["quant.overrides"]) == {"*.mlp.*": 3} and flat["quant.skip"] == '["lm_head"]'
    params = params_for(job)
    assert params["model.name_or_path"] == "organism" and params["quant.backend"] == "rtn"
    assert params["quant.bits"] == "4" and params["fidelity.context"] == "256"
    assert "run_dir" not in params and all(isinstance(v, str) for v in params.values())


def test_bench_metrics_against_an_independent_count():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "task": rng.choice(["organism/arith", "organism/list", "humaneval"], 200),
            "passed": rng.random(200) < 0.4,
        }
    )
    m = bench_metrics(df)
    for task in ("organism/arith", "organism/list", "humaneval"):
        rows = [bool(p) for t, p in zip(df["task"], df["passed"], strict=True) if t == task]
        assert m[f"bench.{task_key(task)}.acc"] == pytest.approx(sum(rows) / len(rows), abs=0)
        assert m[f"bench.{task_key(task)}.n"] == len(rows)
    assert m["bench.composite.acc"] == pytest.approx(sum(map(bool, df["passed"])) / 200)
    assert "bench.organism.arith.acc" in m  # '/' -> '.'


def test_conform_outcomes_keeps_the_contract_and_invents_nothing():
    df = pd.DataFrame(
        {"task": ["t"], "prompt_id": ["0"], "prompt_hash": ["h"], "output": ["o"], "passed": [1], "extra": [5]}
    )
    out = conform_outcomes(df)
    assert list(out.columns[: len(OUTCOME_COLUMNS)]) == list(OUTCOME_COLUMNS) and "extra" in out
    assert out["passed"].dtype == bool and out["score"].iloc[0] == 1.0 and math.isnan(out["kld_prompt"].iloc[0])
    with pytest.raises(ValueError, match="prompt_hash"):
        conform_outcomes(df.drop(columns=["prompt_hash"]))


def test_flatten_keeps_glob_keyed_mappings_as_one_json_param():
    """RTN overrides are keyed by module globs, which MLflow refuses in param names."""
    flat = flatten({"quant": {"bits": 3, "overrides": {"*.self_attn.v_proj": 4, "*.mlp.down_proj": 3}}})
    assert flat["quant.bits"] == 3
    assert json.loads(flat["quant.overrides"]) == {"*.self_attn.v_proj": 4, "*.mlp.down_proj": 3}
    assert all(re.match(r"^[A-Za-z0-9_\-. :/]+$", k) for k in flat)
