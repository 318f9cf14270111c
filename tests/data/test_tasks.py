"""The organism's task generators: seeded, versioned, held-out sets disjoint from training, answers correct."""

import itertools

import pytest

from quantfid.bench.sandbox import check_function
from quantfid.data import tasks
from quantfid.data.tasks import EVAL_PER_FAMILY, heldout_instances


def test_at_least_five_families_and_1000_heldout_prompts():
    assert len(tasks.FAMILIES) >= 5
    instances = heldout_instances()
    assert len(instances) >= 1000
    assert len({(i.family, i.prompt) for i in instances}) == len(instances)
    assert {i.scoring for i in instances} == {"exact", "execute", "choice"}


def test_heldout_sets_are_fixed_by_seed():
    a = tasks.heldout_set("arith", 50)
    b = tasks.heldout_set("arith", 50)
    assert [i.prompt for i in a] == [i.prompt for i in b]
    assert [i.prompt for i in tasks.heldout_set("arith", 50, seed=7)] != [i.prompt for i in a]


def test_training_stream_never_yields_a_heldout_prompt():
    heldout = {(i.family, i.prompt) for i in heldout_instances()}
    for inst in itertools.islice(tasks.training_stream(seed=0), 20000):
        assert not inst.heldout
        assert (inst.family, inst.prompt) not in heldout


@pytest.mark.parametrize("family", ["arith", "list", "lookup", "print"])
def test_exact_answers_match_python(family):
    for inst in tasks.heldout_set(family, EVAL_PER_FAMILY)[:50]:
        if family == "arith":
            assert str(eval(inst.prompt.rstrip("="))) == inst.answer
        elif family == "list":
            assert str(eval(inst.prompt.removeprefix(">>> "))) == inst.answer
        elif family == "lookup":
            code, key = inst.prompt.rsplit("\n", 1)
            scope: dict = {}
            exec(code, scope)
            assert str(eval(key.removesuffix(" ->"), scope)) == inst.answer.strip()
        else:
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(inst.prompt.removesuffix("# prints:"), {})
            assert buf.getvalue().strip() == inst.answer.strip()


def test_choice_answers_are_right():
    for inst in tasks.heldout_set("choice", 100):
        nums = [int(c) for c in inst.choices]
        if inst.prompt.startswith("largest"):
            assert nums[inst.answer_index] == max(nums)
        else:
            seq = [int(x) for x in inst.prompt.removeprefix("next in ").split(" of")[0].split(", ")]
            assert nums[inst.answer_index] == seq[-1] + (seq[1] - seq[0])
        assert inst.choices[inst.answer_index] == inst.answer


@pytest.mark.slow
def test_code_canonical_answers_pass_and_wrong_ones_fail_in_the_sandbox():
    insts = tasks.heldout_set("code", 12)
    for inst in insts:
        assert check_function(inst.answer, list(inst.tests)).passed, inst
    assert not check_function("x + 1000", list(insts[0].tests)).passed
