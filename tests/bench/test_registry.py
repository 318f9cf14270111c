"""The task registry: every shipped task file validates; bad names and bad files fail with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantfid.bench import TaskConfigError, list_tasks, load_task
from quantfid.bench.sources import load_prompts
from quantfid.data import tasks as organism_tasks
from quantfid.data.tasks import EVAL_PER_FAMILY, EVAL_SEED

GOOD = {
    "schema": 1,
    "name": "local/qa",
    "version": 1,
    "source": {"type": "jsonl", "path": "data.jsonl"},
    "scoring": {"type": "exact", "normalize": "strip"},
    "generation": {"max_new_tokens": 8, "stop": ["\n"], "batch_size": 4},
}


def write_task(tmp_path: Path, content: dict | str, name: str = "local/qa") -> str:
    path = tmp_path / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict) and content.get("source", {}).get("path") == "data.jsonl":
        content = {**content, "source": {**content["source"], "path": str(tmp_path / "data.jsonl")}}
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def test_every_organism_family_is_a_registry_task_matching_the_evaluator():
    names = list_tasks()
    for family in organism_tasks.FAMILIES:
        task = load_task(f"organism/{family}")
        assert task.name == f"organism/{family}" and f"organism/{family}" in names
        assert task.source == {
            "type": "organism",
            "family": family,
            "n": EVAL_PER_FAMILY,
            "seed": EVAL_SEED,
            "tasks_version": organism_tasks.TASKS_VERSION,
        }
        prompts = load_prompts(task)
        instances = organism_tasks.heldout_set(family, EVAL_PER_FAMILY, EVAL_SEED)
        assert [p.text for p in prompts] == [i.prompt for i in instances]
        assert [p.prompt_hash for p in prompts] == [i.prompt_hash for i in instances]
    assert "humaneval" in names


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskConfigError, match=r"unknown task 'organism/arithmetic'.*organism/arith"):
        load_task("organism/arithmetic")


def test_task_path_env_adds_directories(tmp_path, monkeypatch):
    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    write_task(tmp_path, GOOD)
    monkeypatch.setenv("QUANTFID_TASK_PATH", str(tmp_path))
    assert "local/qa" in list_tasks()
    task = load_task("local/qa")
    assert task.generation.max_new_tokens == 8
    assert [p.expected for p in load_prompts(task)] == ["2"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("version"), r"field 'version': is required but missing"),
        (lambda d: d.update(version="one"), r"field 'version': must be int, got str 'one'"),
        (lambda d: d.update(version=0), r"field 'version': must be > 0"),
        (lambda d: d["scoring"].update(type="exakt"), r"field 'scoring.type': got 'exakt'; expected one of"),
        (lambda d: d["scoring"].update(normalise="strip"), r"field 'scoring.normalise': unknown field"),
        (lambda d: d["source"].update(type="csv"), r"field 'source.type': got 'csv'"),
        (lambda d: d["generation"].update(max_new_tokens=-3), r"field 'generation.max_new_tokens': must be > 0"),
        (lambda d: d["generation"].update(stop="\n"), r"field 'generation.stop': must be list"),
        (lambda d: d["generation"].update(stop=[""]), r"field 'generation.stop': must be a list of non-empty"),
        (lambda d: d.update(scoring="exact"), r"field 'scoring': must be dict"),
        (lambda d: d.update(schema=2), r"field 'schema': task-file format 2 is not supported"),
        (lambda d: d["scoring"].update(type="execute"), r"field 'scoring.harness': is required"),
        (lambda d: d["scoring"].update(type="lm_eval"), r"'lm_eval' does not go with source.type 'jsonl'"),
        (
            lambda d: d.update(source={"type": "organism", "family": "arith", "n": 5, "seed": 1, "tasks_version": "0"}),
            r"field 'source.tasks_version': is '0' but the organism's generators are at TASKS_VERSION",
        ),
        (
            lambda d: d.update(
                source={
                    "type": "organism",
                    "family": "poetry",
                    "n": 5,
                    "seed": 1,
                    "tasks_version": organism_tasks.TASKS_VERSION,
                }
            ),
            r"field 'source.family': got 'poetry'",
        ),
        (
            lambda d: d.update(
                source={
                    "type": "organism",
                    "family": "choice",
                    "n": 5,
                    "seed": 1,
                    "tasks_version": organism_tasks.TASKS_VERSION,
                }
            ),
            r"organism family 'choice' is scored by 'choice', got 'exact'",
        ),
    ],
)
def test_malformed_task_files_name_the_field(tmp_path, mutate, message):
    content = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(content)
    path = write_task(tmp_path, content)
    with pytest.raises(TaskConfigError, match=message) as info:
        load_task(path)
    assert path in str(info.value)  # the error names the file


def test_invalid_yaml_and_non_mapping_files(tmp_path):
    with pytest.raises(TaskConfigError, match="not valid YAML"):
        load_task(write_task(tmp_path, "name: [unclosed\n", name="broken"))
    with pytest.raises(TaskConfigError, match="the file must be a mapping"):
        load_task(write_task(tmp_path, "- just\n- a list\n", name="listy"))


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "data.jsonl").write_text("\n")
    task = load_task(write_task(tmp_path, GOOD))
    with pytest.raises(TaskConfigError, match="the dataset is empty"):
        load_prompts(task)


def test_missing_data_file_and_bad_records(tmp_path):
    task = load_task(write_task(tmp_path, GOOD))
    with pytest.raises(TaskConfigError, match=r"field 'source.path': no file at"):
        load_prompts(task)
    (tmp_path / "data.jsonl").write_text('{"question": "1+1="}\n')
    with pytest.raises(TaskConfigError, match=r"record has no field 'prompt'.*\['question'\]"):
        load_prompts(task)
    (tmp_path / "data.jsonl").write_text("{not json\n")
    with pytest.raises(TaskConfigError, match=r"data\.jsonl:1: not valid JSON"):
        load_prompts(task)


def test_spec_hash_changes_with_the_content(tmp_path):
    a = load_task(write_task(tmp_path, GOOD, name="a"))
    changed = {**GOOD, "generation": {**GOOD["generation"], "max_new_tokens": 9}}
    b = load_task(write_task(tmp_path, changed, name="b"))
    assert a.spec_hash != b.spec_hash
    assert load_task(write_task(tmp_path, GOOD, name="c")).spec_hash == a.spec_hash
