"""Calibration corpora, and the 14 named variants against what the fidelity stage computes (their Hydra settings:
tests/sweep/test_sweep_config.py)."""

from __future__ import annotations

import numpy as np
import pytest

from quantfid.api.variants import PAPER_VARIANT_NAMES, PAPER_VARIANTS
from quantfid.data.corpus import prose_files
from quantfid.fidelity import FidelityError, FidelitySettings, load_corpus
from quantfid.fidelity.metrics import aggregate


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


def test_fourteen_variants_are_distinct_and_every_stat_is_computed():
    assert len(PAPER_VARIANT_NAMES) == 14 == len(set(PAPER_VARIANT_NAMES))
    assert len({v.corpus for v in PAPER_VARIANTS}) >= 3 and len({v.context for v in PAPER_VARIANTS}) >= 2
    rng = np.random.default_rng(0)
    n = 50
    per = {k: rng.random(n) for k in ("kld", "kld_rev", "nll_ref", "nll_quant", "dp")} | {"top1": rng.random(n) > 0.5}
    metrics = aggregate(per, np.arange(n) // 10)
    assert {v.metric for v in PAPER_VARIANTS} <= set(metrics)


def test_a_setting_with_an_unknown_key_is_refused():
    with pytest.raises(FidelityError, match=r"fidelity\.variants is not a fidelity setting"):
        FidelitySettings.from_config({"corpus": "code", "variants": {"names": []}})
