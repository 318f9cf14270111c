"""Your own corpora as ``fidelity.corpus``: a text file, a directory, a JSONL field, a ``datasets`` dataset and a raw
wikitext file (llama.cpp's convention); the corpus's identity is its content hash; bad input is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from quantfid.api.paths import conf_dir
from quantfid.fidelity import FidelityError, FidelitySettings, build_cache, get_or_build, measure
from quantfid.fidelity.cache import identity_for
from quantfid.fidelity.corpora import check_corpus, corpus_label, corpus_sha256, corpus_spec, load_corpus

PARA = "The quick brown fox jumps over the lazy dog. def f(x):\n    return x * 2\n"


def ids(tok, text: str, special: bool = False) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text(PARA * 30)
    d = tmp_path / "docs"
    d.mkdir()
    (d / "2.txt").write_text("second " * 50)
    (d / "1.txt").write_text("first " * 50)
    (d / "skip.md").write_text("not matched")
    rows = [{"text": f"row {i}: {PARA}", "n": i} for i in range(20)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "wiki.test.raw").write_text(" \n = Title = \n \n " + PARA * 30 + "\n")
    return tmp_path


def test_text_file_and_directory(reference, files):
    tok = reference.tokenizer
    got = load_corpus({"source": "text", "path": str(files / "a.txt")}, tok)
    assert got.tolist() == ids(tok, PARA * 30)
    got = load_corpus({"source": "dir", "path": str(files / "docs")}, tok)  # sorted files, EOS between documents
    assert got.tolist() == [*ids(tok, "first " * 50), tok.eos_token_id, *ids(tok, "second " * 50)]
    assert corpus_label({"source": "dir", "path": str(files / "docs")}) == "dir-docs"
    assert corpus_label({"source": "text", "path": str(files / "a.txt"), "name": "mine"}) == "mine"


def test_jsonl_field(reference, files):
    tok = reference.tokenizer
    got = load_corpus({"source": "jsonl", "path": str(files / "data.jsonl"), "field": "text"}, tok)
    expected = []
    for i in range(20):
        expected += ([tok.eos_token_id] if i else []) + ids(tok, f"row {i}: {PARA}")
    assert got.tolist() == expected
    with pytest.raises(FidelityError, match=r"fidelity.corpus.field='body': line 1 of .*data.jsonl has no such field; "
                       r"its keys are \['n', 'text'\]"):  # fmt: skip
        load_corpus({"source": "jsonl", "path": str(files / "data.jsonl"), "field": "body"}, tok)
    with pytest.raises(FidelityError, match=r"fidelity.corpus.field='n': line 1 .* holds a int, not text"):
        check_corpus({"source": "jsonl", "path": str(files / "data.jsonl"), "field": "n"})


def test_datasets_dataset_saved_here(reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    tok = reference.tokenizer
    rows = [f"line {i}. {PARA}" for i in range(10)]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": rows, "id": list(range(10))})}).save_to_disk(
        str(tmp_path / "ds")
    )
    spec = {"source": "dataset", "path": str(tmp_path / "ds"), "split": "test", "field": "text"}
    got = load_corpus(spec, tok)
    expected = []
    for i, r in enumerate(rows):
        expected += ([tok.eos_token_id] if i else []) + ids(tok, r)
    assert got.tolist() == expected
    with pytest.raises(
        FidelityError, match=r"fidelity.corpus.field='body': the dataset .* has columns \['text', 'id'\]"
    ):
        check_corpus({**spec, "field": "body"})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.split='train': the dataset at .* has splits \['test'\]"):
        check_corpus({**spec, "split": "train"})
    # not a save_to_disk directory: load_dataset(path, config, split), as a hub name elsewhere (here: data files)
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "part.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    spec2 = {"source": "dataset", "path": str(tmp_path / "rows"), "field": "text"}
    assert corpus_spec(spec2)["split"] == "train" and corpus_spec(spec2)["config"] is None
    assert load_corpus(spec2, tok).tolist() == expected
    with pytest.raises(
        FidelityError, match=r"fidelity.corpus.path='/nope/ds' \(source 'dataset', .*could not be loaded"
    ):
        check_corpus({"source": "dataset", "path": "/nope/ds", "field": "text"})


def test_wikitext_follows_llama_cpp(reference, files):
    """llama.cpp: the whole file (one trailing newline dropped) tokenized in one call with special tokens (BOS)."""
    tok = reference.tokenizer
    raw = (files / "wiki.test.raw").read_text()
    got = load_corpus({"source": "wikitext", "path": str(files / "wiki.test.raw")}, tok)
    assert got.tolist() == ids(tok, raw[:-1], special=True)
    assert got[0] == tok.bos_token_id
    settings = FidelitySettings(
        corpus={"source": "wikitext", "path": str(files / "wiki.test.raw")}, context=64, max_tokens=256
    )
    _, tokens, _ = identity_for(settings, "ref", tok)
    flat = ids(tok, raw[:-1], special=True)
    for w in range(tokens.shape[0]):  # llama.cpp's chunks: consecutive n_ctx tokens, the first replaced by BOS
        assert tokens[w, 0] == tok.bos_token_id and tokens[w, 1:].tolist() == flat[w * 64 + 1 : (w + 1) * 64]


def test_bad_input_is_one_clear_error(reference, files):
    tok = reference.tokenizer
    with pytest.raises(FidelityError, match=r"fidelity.corpus.path='/nope/x.txt' \(source 'text'\): no such file"):
        check_corpus({"source": "text", "path": "/nope/x.txt"})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.source='pdf' is not a corpus source; choose one of"):
        corpus_spec({"source": "pdf", "path": "x"})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.field is required by corpus source 'jsonl'"):
        corpus_spec({"source": "jsonl", "path": str(files / "data.jsonl")})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.colum is not a param of corpus source 'text'"):
        corpus_spec({"source": "text", "path": "x", "colum": 1})
    with pytest.raises(FidelityError, match=r"fidelity.corpus='nope' is not known; choose a built-in"):
        FidelitySettings(corpus="nope")
    (files / "empty.txt").write_text("  \n")
    with pytest.raises(FidelityError, match=r"fidelity.corpus='text-empty' \(source 'text'\) is empty"):
        check_corpus({"source": "text", "path": str(files / "empty.txt")})
    (files / "short.txt").write_text("tiny text")
    with pytest.raises(FidelityError, match=r"has \d+ tokens, fewer than one window of fidelity.context=64"):
        check_corpus({"source": "text", "path": str(files / "short.txt")}, tok, context=64)
    with pytest.raises(FidelityError, match=r"fidelity.corpus.glob='\*\.pdf': no file in"):
        check_corpus({"source": "dir", "path": str(files / "docs"), "glob": "*.pdf"})
    with pytest.raises(FidelityError, match=r"fidelity.corpus.name='a.b'"):
        corpus_spec({"source": "text", "path": "x", "name": "a.b"})


def test_identity_is_the_content_hash_and_an_edit_never_reuses_the_cache(reference, files, tmp_path):
    path = files / "a.txt"
    spec = {"source": "text", "path": str(path)}
    settings = FidelitySettings(corpus=spec, context=64, topk=4, max_tokens=256, batch_size=4)
    sha = corpus_sha256(spec, settings.max_tokens)
    assert sha == corpus_sha256({**spec, "name": "other"}, 256)  # the label is not the content
    cache = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, cache_dir=tmp_path)
    assert cache.manifest["corpus_text_sha256"] == sha and cache.manifest["corpus"] == "text-a"
    assert measure(reference.model, cache, reference.tokenizer, progress=False).metrics["fid.kld_mean"] == 0.0
    # same length, other text: a new hash, a new cache key, a new cache built (the stale one is never used)
    path.write_text((PARA * 30).replace("fox", "cat"))
    assert corpus_sha256(spec, 256) != sha
    cache2 = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, cache_dir=tmp_path)
    assert cache2.key != cache.key and cache2.manifest["corpus_text_sha256"] == corpus_sha256(spec, 256)
    assert not np.array_equal(np.asarray(cache2.array("tokens")), np.asarray(cache.array("tokens")))
    # an edit past the budget's text changes nothing the measurement reads: same identity
    path.write_text((PARA * 30).replace("fox", "cat") + "more text at the end " * 200)
    assert corpus_sha256(spec, 4) == corpus_sha256({"source": "text", "path": str(path)}, 4)


def test_corpus_from_yaml_and_override(reference, files, tmp_path):
    """A mapping as a command-line override, and a conf/corpus/<name>.yaml file (the YAML half of the registry)."""
    override = f"fidelity.corpus={{source: text, path: '{files / 'a.txt'}', name: mytext}}"
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        from quantfid.sweep.configs import register_configs

        register_configs()
        cfg = compose(config_name="config", overrides=[override, "fidelity.context=64"])
    settings = FidelitySettings.from_config(cfg.fidelity)
    assert settings.name == "mytext.64" and settings.corpus_label == "mytext"
    cache = build_cache(reference.model, reference.tokenizer, settings, reference.fingerprint, cache_dir=tmp_path)
    assert cache.n_windows >= 1
    assert corpus_spec("wikitext2") == {
        "source": "wikitext",
        "path": "wikitext-2-raw/wiki.test.raw",
        "name": "wikitext2",
    }
