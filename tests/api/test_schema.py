"""The tracking schema's helpers: bench metrics from outcomes, the logged outcome table, names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantfid.api.schema import (
    LOGGED_OUTCOME_COLUMNS,
    bench_metrics,
    conform_outcomes,
    run_name,
    task_key,
)
from quantfid.api.variants import PRIMARY_VARIANT, variant_name


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
    assert list(out.columns[: len(LOGGED_OUTCOME_COLUMNS)]) == list(LOGGED_OUTCOME_COLUMNS) and "extra" in out
    assert out["passed"].dtype == bool and out["score"].iloc[0] == 1.0 and math.isnan(out["kld_prompt"].iloc[0])
    with pytest.raises(ValueError, match="prompt_hash"):
        conform_outcomes(df.drop(columns=["prompt_hash"]))



def test_names():
    assert run_name("rtn_w4_g64", "code", 256) == "rtn_w4_g64@code.256" and run_name("reference") == "reference"
    assert variant_name("kld_mean", "code", 256) == PRIMARY_VARIANT == "kld_mean@code.256"
    assert task_key("organism/arith") == "organism.arith"
