"""Calibration corpora, the 14 named variants and the Hydra configs of conf/fidelity/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from quantfid.fidelity import PAPER_SETTINGS, PAPER_VARIANTS, FidelityError, FidelitySettings, load_corpus
from quantfid.fidelity.corpora import prose_files
from quantfid.fidelity.metrics import aggregate

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", ["code", "prose", "tasks"])
def test_corpora_load_and_are_deterministic(reference, name):
    tok = reference.tokenizer
    ids = load_corpus(name, tok, max_tokens=3000)
    assert ids.dtype == np.int64 and ids.size == 3000
    assert ids.min() >= 0 and ids.max() < len(tok)
    np.testing.assert_array_equal(ids, load_corpus(name, tok, max_tokens=3000))


def test_prose_is_the_debian_license_texts():
    files = prose_files()
    assert any(f.name == "GPL-3" for f in files) and len(files) == len(set(files))


def test_tasks_corpus_covers_every_family_early(reference):
    text = reference.tokenizer.decode(load_corpus("tasks", reference.tokenizer, max_tokens=2000))
    for marker in ("reverse", ">>>", "d = {", "# prints:", "def f(x):"):
        assert marker in text


def test_corpus_errors(reference, tmp_path, monkeypatch):
    with pytest.raises(FidelityError, match="not known"):
        load_corpus("wikitext", reference.tokenizer)
    monkeypatch.setenv("QUANTFID_PROSE_DIR", str(tmp_path / "missing"))
    with pytest.raises(FidelityError, match="QUANTFID_PROSE_DIR"):
        load_corpus("prose", reference.tokenizer)


def test_fourteen_variants_match_the_yaml_and_every_stat_is_computed():
    names = [v.name for v in PAPER_VARIANTS]
    assert len(names) == 14 == len(set(names))
    doc = yaml.safe_load((CONF / "fidelity" / "variants" / "paper14.yaml").read_text())
    assert doc["names"] == names
    assert len({v.corpus for v in PAPER_VARIANTS}) >= 3 and len({v.context for v in PAPER_VARIANTS}) >= 2
    rng = np.random.default_rng(0)
    n = 50
    per = {k: rng.random(n) for k in ("kld", "kld_rev", "nll_ref", "nll_quant", "dp")} | {"top1": rng.random(n) > 0.5}
    metrics = aggregate(per, np.arange(n) // 10)
    assert {v.metric for v in PAPER_VARIANTS} <= set(metrics)


@pytest.mark.parametrize("option", ["default", *PAPER_SETTINGS])
def test_hydra_settings_compose(option):
    with initialize_config_dir(config_dir=str(CONF / "fidelity"), version_base="1.3"):
        cfg = compose(option)
    s = FidelitySettings.from_config(cfg)
    assert len(cfg.variants.names) == 14
    assert s.scored_fraction == 0.5 and s.topk > 0
    if option != "default":
        assert option == f"{s.corpus}_{s.context}"
    covered = {(v.corpus, v.context) for v in PAPER_VARIANTS}
    assert option == "default" or (s.corpus, s.context) in covered
