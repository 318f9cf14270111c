"""The registry runner: organism outcomes against an independent reference, bad input, choice scoring, the cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from quantfid.api.schema import OUTCOME_COLUMNS, bench_metrics
from quantfid.bench import (
    PromptTooLongError,
    TaskConfigError,
    cached_outcomes,
    run_tasks,
)
from quantfid.bench.cache import outcome_cache_path
from quantfid.bench.registry import load_task
from quantfid.bench.sandbox import check_function
from quantfid.bench.scoring import generate_until
from quantfid.data import tasks as organism_tasks
from quantfid.data.tasks import EVAL_SEED
from quantfid.organism.evaluate import score_tasks


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _plain_greedy(model, tok, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Independent greedy decoding: plain ``model.generate`` over the same left-padded batches (no stopping
    criteria, no early exit), each output cut at its first newline."""
    tok.padding_side, side = "left", tok.padding_side
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(t.split("\n", 1)[0] for t in texts)
    finally:
        tok.padding_side = side
    return out


def assert_organism_tasks_match_an_independent_reference(model, tok, n):
    """Every organism family through the registry against outcomes computed here from the task instances: exact
    match after strip, execution of ``def f(x): return <output>`` against the tests, argmax of the float64
    log-likelihood (prompts whose top two choices are within 1e-4 are not compared)."""
    outcomes = score_tasks(model, tok, n)
    assert len(outcomes) == n * len(organism_tasks.FAMILIES)
    for family in organism_tasks.FAMILIES:
        insts = organism_tasks.heldout_set(family, 200, EVAL_SEED)[:n]
        ours = outcomes[outcomes.task == f"organism/{family}"]
        assert ours["prompt_hash"].tolist() == [i.prompt_hash for i in insts]
        if family == "choice":
            for inst, (_, row) in zip(insts, ours.iterrows(), strict=True):
                lls = [_loglik(model, tok, inst.prompt, c)[0] for c in inst.choices]
                best, second = sorted(lls, reverse=True)[:2]
                if best - second > 1e-4:
                    pick = lls.index(best)
                    assert row["output"] == inst.choices[pick] and row["passed"] == (pick == inst.answer_index)
            continue
        outputs = _plain_greedy(model, tok, [i.prompt for i in insts])
        assert ours["output"].tolist() == outputs, family
        if family == "code":
            pairs = zip(outputs, insts, strict=True)
            expected = [bool(o.strip()) and check_function(o, list(i.tests)).passed for o, i in pairs]
        else:
            expected = [o.strip() == i.answer.strip() for o, i in zip(outputs, insts, strict=True)]
        assert ours["passed"].tolist() == expected, family


@pytest.mark.slow
def test_organism_tasks_match_an_independent_reference_on_a_random_model(tiny):
    assert_organism_tasks_match_an_independent_reference(*tiny, n=16)


@pytest.mark.slow
def test_organism_tasks_match_an_independent_reference_on_the_organism(organism):
    assert_organism_tasks_match_an_independent_reference(*organism, n=64)


def test_score_tasks_refuses_more_prompts_than_the_held_out_sets_have(tiny):
    with pytest.raises(ValueError, match=r"n_per_family=201.*pick 1\.\.200"):
        score_tasks(*tiny, 201)


def test_outcome_table_columns_and_summary(tiny):
    model, tok = tiny
    df = run_tasks(model, tok, ["organism/arith", "organism/choice"], max_prompts=5)
    assert tuple(df.columns[: len(OUTCOME_COLUMNS)]) == OUTCOME_COLUMNS
    assert len(df) == 10 and df["passed"].dtype == bool and df["score"].dtype == float
    assert df["prompt_id"].tolist() == [str(i) for i in range(5)] * 2
    assert set(df.loc[df.task == "organism/choice", "output"]) <= {
        c for i in organism_tasks.heldout_set("choice", 5, EVAL_SEED) for c in i.choices
    }
    summary = bench_metrics(df)
    assert set(summary) == {
        "bench.organism.arith.acc",
        "bench.organism.arith.n",
        "bench.organism.choice.acc",
        "bench.organism.choice.n",
        "bench.composite.acc",
        "bench.composite.n",
    }
    assert summary["bench.composite.acc"] == pytest.approx(df["passed"].mean())


def test_generate_until_matches_plain_generate_and_stops_early(tiny):
    model, tok = tiny
    prompts = [i.prompt for i in organism_tasks.heldout_set("lookup", 12, EVAL_SEED)]
    assert generate_until(model, tok, prompts, 16, ("\n",), batch_size=5) == _plain_greedy(
        model, tok, prompts, 16, batch_size=5
    )
    # a stop set that every first token hits: each batch needs one decoding step instead of 16
    chars = sorted({c for i in range(len(tok)) for c in tok.decode([i])} - {""})
    with ForwardCounter(model) as full:
        generate_until(model, tok, prompts, 16, (), batch_size=12)
    with ForwardCounter(model) as early:
        outs = generate_until(model, tok, prompts, 16, tuple(chars), batch_size=12)
    assert full.calls == 16 and early.calls <= 2
    assert all(o == "" for o in outs)  # cut before the first stop string


def test_unknown_task_fails_before_any_model_work(tiny):
    model, tok = tiny
    with ForwardCounter(model) as calls, pytest.raises(TaskConfigError, match=r"unknown task 'nope'.*organism/arith"):
        run_tasks(model, tok, ["organism/arith", "nope"])
    assert calls.calls == 0
    with pytest.raises(TaskConfigError, match="no task names"):
        run_tasks(model, tok, [])


def test_prompt_longer_than_the_context_is_one_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(PromptTooLongError, match=r"task 'organism/lookup', prompt '0' .*does not fit the context of 8"):
        run_tasks(model, tok, ["organism/lookup"], max_prompts=3, context_limit=8)
    with pytest.raises(PromptTooLongError, match=r"organism/choice.*for its longest choice"):
        run_tasks(model, tok, ["organism/choice"], max_prompts=3, context_limit=24)
    # by default the model's own context (max_position_embeddings=256) applies: HumanEval's long prompts overflow
    with pytest.raises(PromptTooLongError, match=r"task 'humaneval', prompt 'HumanEval/\d+'.*context of 256"):
        run_tasks(model, tok, ["humaneval"])


def test_generation_is_capped_by_the_context(tiny):
    model, tok = tiny
    prompt = organism_tasks.heldout_set("arith", 1, EVAL_SEED)[0].prompt
    n = len(tok(prompt)["input_ids"])
    with ForwardCounter(model) as calls:
        generate_until(model, tok, [prompt], 32, (), context_limit=n + 3)
    assert calls.calls == 3


def _loglik(model, tok, prompt: str, cont: str) -> tuple[float, int]:
    """Independent float64 log-likelihood of ``cont`` after ``prompt``, one sequence at a time."""
    p = tok(prompt)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()[0]
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(c)), len(c)


@pytest.mark.parametrize("norm", ["none", "tokens", "bytes"])
def test_choice_scoring_against_an_independent_float64_loglikelihood(tiny, tmp_path, monkeypatch, norm):
    model, tok = tiny
    records = []
    for i, inst in enumerate(organism_tasks.heldout_set("choice", 12, EVAL_SEED)):
        choices = [*inst.choices[:3], " 1234567"]  # one long choice so the normalisations disagree
        records.append({"id": f"q{i}", "prompt": inst.prompt, "choices": choices, "answer_index": inst.answer_index})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    task = {
        "name": "local/mc",
        "version": 1,
        "source": {"type": "jsonl", "path": "data.jsonl"},
        "scoring": {"type": "choice", "length_normalization": norm},
        "generation": {"batch_size": 5},
    }
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump(task))
    monkeypatch.setenv("QUANTFID_TASK_PATH", str(tmp_path))
    df = run_tasks(model, tok, ["mc"])
    assert df["prompt_id"].tolist() == [r["id"] for r in records]
    for rec, (_, row) in zip(records, df.iterrows(), strict=True):
        values = []
        for c in rec["choices"]:
            lp, n = _loglik(model, tok, rec["prompt"], c)
            values.append({"none": lp, "tokens": lp / n, "bytes": lp / len(c.encode())}[norm])
        assert json.loads(row["detail"]) == pytest.approx(values, abs=1e-4)
        pick = max(range(len(values)), key=lambda k: values[k])
        assert row["output"] == rec["choices"][pick]
        assert row["passed"] == (pick == rec["answer_index"])


def test_exact_scoring_normalisation_on_local_data(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    prompts = ["1+1=", "2+2="]
    greedy = generate_until(model, tok, prompts, 4)
    # answers the model's own outputs, up to case and whitespace: lower_strip passes them, none does not
    recs = [{"prompt": p, "answer": "  " + g.upper() + " "} for p, g in zip(prompts, greedy, strict=True)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for how in ("lower_strip", "none"):
        task = {
            "name": f"local/{how}",
            "version": 1,
            "source": {"type": "jsonl", "path": "data.jsonl"},
            "scoring": {"type": "exact", "normalize": how},
            "generation": {"max_new_tokens": 4},
        }
        (tmp_path / f"{how}.yaml").write_text(yaml.safe_dump(task))
        monkeypatch.setenv("QUANTFID_TASK_PATH", str(tmp_path))
        df = run_tasks(model, tok, [how])
        assert df["output"].tolist() == greedy
        if how == "lower_strip":
            assert df["passed"].tolist() == [g.strip().lower() == g.upper().strip().lower() for g in greedy]
        else:
            assert df["passed"].tolist() == [False, False]


def test_outcomes_are_computed_once_per_model_and_task_and_reused(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.setenv("QUANTFID_CACHE", str(tmp_path / "cache"))
    names = ["organism/arith", "organism/choice"]
    with ForwardCounter(model) as first:
        a = cached_outcomes(model, tok, "fp0123", names, max_prompts=4)
    with ForwardCounter(model) as second:
        b = cached_outcomes(model, tok, "fp0123", names, max_prompts=4)
    assert first.calls > 0 and second.calls == 0
    pd.testing.assert_frame_equal(a, b)
    arith = load_task("organism/arith")
    path = outcome_cache_path("fp0123", arith, 4, None)
    assert path.is_file() and path.parent.parent.name == "fp0123" and path.name.startswith(f"v{arith.version}-")
    assert not list(path.parent.glob("*.tmp"))
    # another fingerprint or another prompt count is another entry
    with ForwardCounter(model) as third:
        cached_outcomes(model, tok, "fp9999", names[:1], max_prompts=4)
        cached_outcomes(model, tok, "fp0123", names[:1], max_prompts=3)
    assert third.calls > 0
    with pytest.raises(ValueError, match="fingerprint"):
        cached_outcomes(model, tok, "", names)
