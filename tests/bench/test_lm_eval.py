"""lm-evaluation-harness on the in-memory model, offline, on a task defined on local JSON data."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from quantfid.api.schema import OUTCOME_COLUMNS
from quantfid.bench import TaskConfigError, run_lm_eval, run_tasks


@pytest.fixture
def lm_eval_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    rng = random.Random(0)
    rows = []
    for _ in range(6):
        a, b = rng.randint(10, 99), rng.randint(1, 9)
        choices = [str(a + b), str(a + b + 1), str(a + b - 1)]
        rng.shuffle(choices)
        rows.append(
            {"question": f"{a}+{b}=", "choices": choices, "label": choices.index(str(a + b)), "answer": str(a + b)}
        )
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "{{question}}",
    }
    (tmp_path / "qf_mc.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "qf_mc",
                **common,
                "output_type": "multiple_choice",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "{{label}}",
                "metric_list": [{"metric": "acc"}],
            }
        )
    )
    (tmp_path / "qf_gen.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "qf_gen",
                **common,
                "output_type": "generate_until",
                "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
                "metric_list": [{"metric": "exact_match"}],
            }
        )
    )
    return tmp_path, rows


@pytest.mark.slow
def test_lm_eval_tasks_become_outcome_rows(tiny, lm_eval_dir, monkeypatch):
    from quantfid.bench.scoring import choice_loglikelihoods

    model, tok = tiny
    where, rows = lm_eval_dir
    df = run_lm_eval(model, tok, ["qf_mc", "qf_gen"], include_path=str(where))
    assert tuple(df.columns[: len(OUTCOME_COLUMNS)]) == OUTCOME_COLUMNS
    mc = df[df.task == "lm_eval/qf_mc"]
    assert mc["prompt_id"].tolist() == [str(i) for i in range(6)]
    assert mc["expected"].tolist() == [" " + r["answer"] for r in rows]  # lm-eval prefixes the target delimiter
    # lm-eval's acc is the argmax of the summed log-likelihoods: check it against our own scorer
    lls = choice_loglikelihoods(
        model, tok, [r["question"] for r in rows], [[" " + c for c in r["choices"]] for r in rows]
    )
    for r, ll, (_, row) in zip(rows, lls, mc.iterrows(), strict=True):
        pick = max(range(len(ll)), key=lambda k: ll[k][0])
        assert row["output"] == " " + r["choices"][pick]
        assert row["passed"] == (pick == r["label"]) and row["score"] == float(pick == r["label"])
    gen = df[df.task == "lm_eval/qf_gen"]
    assert len(gen) == 6 and gen["detail"].eq("exact_match").all()
    assert (gen["passed"] == gen.apply(lambda x: x["output"].strip() == x["expected"].strip(), axis=1)).all()

    # the same lm-eval task as a registry task (source.type lm_eval) through run_tasks
    (where / "registry").mkdir()
    (where / "registry" / "mc.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "local/lm_mc",
                "version": 3,
                "source": {"type": "lm_eval", "task": "qf_mc", "include_path": str(where)},
                "scoring": {"type": "lm_eval", "metric": "acc"},
                "generation": {"batch_size": 4},
            }
        )
    )
    monkeypatch.setenv("QUANTFID_TASK_PATH", str(where / "registry"))
    via_registry = run_tasks(model, tok, ["mc"], max_prompts=4)
    assert via_registry["task"].eq("local/lm_mc").all() and via_registry["task_version"].eq(3).all()
    # calibration prompts (the hash split, quantfid.bench.calibration) are left out of the evaluation rows
    kept = mc.set_index("prompt_id").loc[via_registry["prompt_id"], "passed"]
    assert via_registry["passed"].tolist() == kept.tolist()


@pytest.mark.slow
def test_lm_eval_calibration_prompts_are_the_hash_split(tiny, lm_eval_dir, monkeypatch):
    from quantfid.bench.calibration import calibration_instances

    model, tok = tiny
    where, rows = lm_eval_dir
    (where / "registry").mkdir()
    (where / "registry" / "mc.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "local/lm_mc",
                "version": 1,
                "source": {"type": "lm_eval", "task": "qf_mc", "include_path": str(where), "calibration_fraction": 0.5},
                "scoring": {"type": "lm_eval", "metric": "acc"},
            }
        )
    )
    monkeypatch.setenv("QUANTFID_TASK_PATH", str(where / "registry"))
    cal = calibration_instances("mc")
    evaluation = run_tasks(model, tok, ["mc"])
    assert cal and len(cal) + len(evaluation) == len(rows)
    assert not {p.prompt_hash for p in cal} & set(evaluation["prompt_hash"])
    assert {p.text for p in cal} | set(evaluation["prompt"]) == {r["question"] for r in rows}
    by_q = {r["question"]: r for r in rows}
    assert all(p.choices[p.answer_index] == " " + by_q[p.text]["answer"] for p in cal)


@pytest.mark.slow
def test_unknown_lm_eval_task_is_a_clear_error(tiny, lm_eval_dir):
    model, tok = tiny
    where, _ = lm_eval_dir
    with pytest.raises(TaskConfigError, match=r"unknown lm-eval task\(s\) \['qf_nope'\]"):
        run_lm_eval(model, tok, ["qf_nope"], include_path=str(where))
