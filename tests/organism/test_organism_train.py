"""The training code still trains and saves a model that loads through from_pretrained (well under a minute)."""

import json
import math

import pytest
import torch

from quantfid.models import ModelSpec, load_reference
from quantfid.organism.train import TrainConfig, train


@pytest.mark.slow
def test_short_training_run_saves_a_loadable_model(tmp_path):
    cfg = TrainConfig(
        steps=12,
        batch_size=4,
        seq_len=64,
        hidden_size=128,
        num_layers=1,
        num_heads=2,
        intermediate_size=256,
        vocab_size=400,
        text_chars=300_000,
        tokenizer_chars=300_000,
        task_text_samples=2000,
        warmup_steps=2,
    )
    meta = train(cfg, tmp_path, log_every=4, save_every=100)
    assert meta["steps_done"] == cfg.steps and meta["tokens_seen"] == cfg.steps * cfg.batch_size * cfg.seq_len
    history = json.loads((tmp_path / "training.json").read_text())["history"]
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses  # it learns
    ref = load_reference(ModelSpec(str(tmp_path)))
    ids = ref.tokenizer("12+7=", return_tensors="pt")["input_ids"]
    assert torch.isfinite(ref.model(input_ids=ids).logits).all()
    assert ref.model.config.num_hidden_layers == 1
    more = train(
        TrainConfig(steps=3, batch_size=2, seq_len=64, text_chars=100_000, warmup_steps=1, init_from=str(tmp_path)),
        tmp_path / "continued",
        log_every=1,
    )
    assert more["continued_from"]["steps_done"] == meta["steps_done"]
    assert load_reference(ModelSpec(str(tmp_path / "continued"))).model.config.hidden_size == 128
