"""Run identity and flattened params: the pieces of the run records that need no store."""

from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from quantfid.tracking.identity import model_source_fingerprint, run_identity, semantic_config
from quantfid.tracking.runs import flatten, params_for


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


def test_flatten_keeps_glob_keyed_mappings_as_one_json_param():
    """RTN overrides are keyed by module globs, which MLflow refuses in param names."""
    flat = flatten({"quant": {"bits": 3, "overrides": {"*.self_attn.v_proj": 4, "*.mlp.down_proj": 3}}})
    assert flat["quant.bits"] == 3
    assert json.loads(flat["quant.overrides"]) == {"*.self_attn.v_proj": 4, "*.mlp.down_proj": 3}
    assert all(re.match(r"^[A-Za-z0-9_\-. :/]+$", k) for k in flat)
