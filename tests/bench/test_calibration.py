"""Calibration prompts: fixed by seed, versioned, and disjoint from the evaluation prompts by prompt hash."""

from __future__ import annotations

import json

import pytest
import yaml

from quantfid.bench import load_task
from quantfid.bench.calibration import (
    CalibrationOverlapError,
    assert_disjoint,
    calibration_hashes,
    calibration_instances,
)
from quantfid.bench.registry import TaskConfigError
from quantfid.bench.sources import all_prompts, load_prompts
from quantfid.data import tasks as organism_tasks
from quantfid.data.corpus import documents


@pytest.mark.parametrize("family", list(organism_tasks.FAMILIES))
def test_organism_calibration_is_disjoint_fixed_and_answered(family):
    name = f"organism/{family}"
    cal = calibration_instances(name)
    assert len(cal) == organism_tasks.CALIBRATION_PER_FAMILY
    evaluation = load_prompts(load_task(name))
    assert not {p.prompt_hash for p in cal} & {p.prompt_hash for p in evaluation}
    assert not {p.text for p in cal} & {p.text for p in evaluation}
    assert [p.text for p in calibration_instances(name)] == [p.text for p in cal]  # fixed by seed
    assert all(p.expected for p in cal)
    # the data-level draw is the same set, and no calibration prompt is a training prompt
    assert [i.prompt for i in organism_tasks.calibration_set(family)] == [p.text for p in cal]
    assert all(i.heldout for i in organism_tasks.calibration_set(family))


def test_a_different_seed_gives_a_different_draw():
    a = organism_tasks.calibration_set("arith", 20)
    b = organism_tasks.calibration_set("arith", 20, seed=1)
    assert [i.prompt for i in a] != [i.prompt for i in b]


def test_overlap_raises():
    evaluation = load_prompts(load_task("organism/arith"))
    with pytest.raises(CalibrationOverlapError, match="also evaluation prompts"):
        assert_disjoint("organism/arith", evaluation[:3], evaluation)
    inst = organism_tasks.heldout_set("arith", 5)
    with pytest.raises(organism_tasks.DisjointnessError):
        organism_tasks.assert_disjoint("calibration", inst, {inst[0].prompt_hash})


def test_truth_draw_is_disjoint_from_evaluation_and_calibration():
    truth = organism_tasks.truth_set("arith", 300)
    assert len(truth) == 300
    forbidden = organism_tasks.eval_hashes("arith") | {i.prompt_hash for i in organism_tasks.calibration_set("arith")}
    assert not {i.prompt_hash for i in truth} & forbidden
    assert organism_tasks.truth_set("print", 100, max_draws=50_000) == [] or all(
        i.prompt_hash not in organism_tasks.eval_hashes("print") for i in organism_tasks.truth_set("print", 100)
    )


def test_tasks_corpus_holds_no_evaluation_prompt():
    evaluation = {i.prompt for i in organism_tasks.heldout_instances()}
    docs = list(documents("tasks"))
    assert len(docs) == organism_tasks.CALIBRATION_PER_FAMILY * len(organism_tasks.FAMILIES)
    assert not any(doc.startswith(p) for doc in docs for p in evaluation if doc[: len(p)] == p)


def _jsonl_task(tmp_path, n, fraction=None):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(n)))
    source = {"type": "jsonl", "path": str(data)}
    if fraction is not None:
        source["calibration_fraction"] = fraction
    spec = {"name": "local/add", "version": 1, "source": source, "scoring": {"type": "exact"}}
    path = tmp_path / "add.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_jsonl_split_by_prompt_hash(tmp_path):
    path = _jsonl_task(tmp_path, 400)
    task = load_task(path)
    cal = calibration_instances(path)
    evaluation = load_prompts(task)
    assert len(cal) + len(evaluation) == len(all_prompts(task)) == 400
    assert 25 <= len(cal) <= 80  # about 1/8
    assert not {p.prompt_hash for p in cal} & {p.prompt_hash for p in evaluation}
    assert calibration_hashes(path) == {p.prompt_hash for p in cal}
    assert len(calibration_instances(path, n=5)) == 5


def test_calibration_fraction_zero_keeps_every_prompt_and_has_no_calibration(tmp_path):
    path = _jsonl_task(tmp_path, 50, fraction=0)
    assert len(load_prompts(load_task(path))) == 50
    with pytest.raises(TaskConfigError, match="no calibration prompts"):
        calibration_instances(path)


def test_bad_calibration_fraction_names_the_field(tmp_path):
    with pytest.raises(TaskConfigError, match="calibration_fraction"):
        load_task(_jsonl_task(tmp_path, 5, fraction=1.5))


def test_humaneval_split():
    task = load_task("humaneval")
    cal = calibration_instances("humaneval")
    evaluation = load_prompts(task)
    assert len(cal) + len(evaluation) == 164
    assert 8 <= len(cal) <= 35
    assert not {p.prompt_id for p in cal} & {p.prompt_id for p in evaluation}
