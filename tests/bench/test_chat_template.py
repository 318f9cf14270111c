"""Chat templates for instruct models: ``bench.chat_template`` (or a task's ``generation.chat_template``) wraps every
generation prompt as one user turn with the tokenizer's own template; recorded in the run's params (bench group)."""

from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize_config_dir

from quantfid.api.paths import conf_dir
from quantfid.bench import cached_outcomes
from quantfid.bench.cache import outcome_cache_path
from quantfid.bench.registry import TaskConfigError, load_task
from quantfid.bench.runner import run_task
from quantfid.models import ModelSpec, load_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_model_dir, tmp_path_factory):
    """A local tokenizer with a chat template, saved and loaded like an instruct model's."""
    out = tmp_path_factory.mktemp("chat")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = load_tokenizer(ModelSpec(str(out)))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    reloaded = load_tokenizer(ModelSpec(str(out)))
    assert reloaded.chat_template == TEMPLATE
    return reloaded


def test_generation_prompts_go_through_the_chat_template(tiny, chat_tokenizer):
    model, _ = tiny
    task = load_task("organism/arith")
    plain = run_task(model, chat_tokenizer, task, max_prompts=2)
    chat = run_task(model, chat_tokenizer, task, max_prompts=2, chat_template=True)
    for raw, templated in zip(plain["prompt"], chat["prompt"], strict=True):
        assert templated == f"<|user|>\n{raw}<|end|>\n<|assistant|>\n"
    assert chat["prompt_hash"].tolist() == plain["prompt_hash"].tolist()  # the same prompts, paired across runs
    # choice tasks score log-likelihoods of the raw prompt: left alone
    choice = run_task(model, chat_tokenizer, load_task("organism/choice"), max_prompts=1, chat_template=True)
    assert not choice["prompt"].iloc[0].startswith("<|user|>")


def test_no_template_is_a_clear_error_and_the_cache_keeps_them_apart(tiny, chat_tokenizer, tmp_path):
    model, tok = tiny
    with pytest.raises(TaskConfigError, match=r"bench.chat_template=true .* the tokenizer has no chat template"):
        run_task(model, tok, load_task("organism/arith"), max_prompts=1, chat_template=True)
    task = load_task("organism/arith")
    assert outcome_cache_path("fp", task, 2, None, tmp_path) != outcome_cache_path("fp", task, 2, None, tmp_path, True)
    out = cached_outcomes(model, chat_tokenizer, "fp", ["organism/arith"], max_prompts=1, cache_dir=tmp_path,
                          chat_template=True)  # fmt: skip
    assert out["prompt"].iloc[0].startswith("<|user|>")
    assert outcome_cache_path("fp", task, 1, None, tmp_path, True).is_file()


def test_the_option_is_a_bench_param():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        from quantfid.sweep.configs import register_configs

        register_configs()
        cfg = compose(config_name="config", overrides=["bench.chat_template=true"])
    from quantfid.tracking.runs import params_for

    assert params_for({"bench": dict(cfg.bench)})["bench.chat_template"] == "True"
