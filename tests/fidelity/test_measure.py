"""The cache + measure path on a real (tiny) causal LM, against an independent float64 recomputation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import special

from quantfid.fidelity import (
    CacheMismatchError,
    FidelityError,
    FidelitySettings,
    ReferenceCache,
    TokenizerMismatchError,
    build_cache,
    get_or_build,
    measure,
    per_prompt_kld,
)
from quantfid.fidelity.settings import scored_first

TOL = {"rtol": 1e-6, "atol": 1e-6}


def _independent(model, cache: ReferenceCache, ref_model) -> dict[str, np.ndarray]:
    """Per-token arrays recomputed window by window (no padding, no batching) in float64 numpy."""
    out = {k: [] for k in ("kld", "kld_rev", "nll_ref", "nll_quant", "top1", "dp")}
    tokens, lengths = cache.array("tokens"), cache.array("lengths")
    f = cache.manifest["scored_fraction"]
    for w in range(cache.n_windows):
        n = int(lengths[w])
        ids = torch.tensor(np.array(tokens[w, :n], dtype=np.int64))[None]
        with torch.no_grad():
            lr = ref_model(input_ids=ids).logits[0].double().numpy()
            lq = model(input_ids=ids).logits[0].double().numpy()
        first = scored_first(n, f)
        lp = lr[first : n - 1] - special.logsumexp(lr[first : n - 1], axis=-1, keepdims=True)
        lqq = lq[first : n - 1] - special.logsumexp(lq[first : n - 1], axis=-1, keepdims=True)
        tgt = ids[0, first + 1 : n].numpy()
        rows = np.arange(len(tgt))
        p, q = np.exp(lp), np.exp(lqq)
        out["kld"].append(special.rel_entr(p, q).sum(-1))
        out["kld_rev"].append(special.rel_entr(q, p).sum(-1))
        out["nll_ref"].append(-lp[rows, tgt])
        out["nll_quant"].append(-lqq[rows, tgt])
        out["top1"].append(lp.argmax(-1) == lqq.argmax(-1))
        out["dp"].append(q[rows, tgt] - p[rows, tgt])
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def caches(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("qf-cache")
    base = FidelitySettings(corpus="code", context=64, topk=16, max_tokens=1000, batch_size=4, partial_last=True)
    topk = build_cache(reference.model, reference.tokenizer, base, reference.fingerprint, cache_dir=root)
    exact = build_cache(
        reference.model, reference.tokenizer, dataclasses.replace(base, exact=True), reference.fingerprint, root
    )
    return root, topk, exact


def test_identical_model_gives_kld_exactly_zero(reference, caches):
    _, topk, exact = caches
    for cache in (topk, exact):
        r = measure(reference.model, cache, tokenizer=reference.tokenizer, progress=False)
        assert r.ok, r.error
        assert np.all(r.per_token["kld"] == 0) and np.all(r.per_token["kld_rev"] == 0)
        assert np.all(r.per_token["dp"] == 0) and r.per_token["top1"].all()
        assert r.metrics["fid.kld_mean"] == 0 and r.metrics["fid.ppl_ratio"] == 1 and r.metrics["fid.top1_agree"] == 1


@pytest.mark.slow
def test_exact_mode_matches_independent_float64_and_short_padded_window(reference, caches, perturbed):
    """The last window is shorter than the context and runs right-padded in a batch; nothing changes."""
    _, _, exact = caches
    lengths = np.asarray(exact.array("lengths"))
    assert lengths[-1] < exact.manifest["context"] and lengths[:-1].min() == exact.manifest["context"]
    quant = perturbed(reference.model)
    r = measure(quant, exact, tokenizer=reference.tokenizer, progress=False)
    ind = _independent(quant, exact, reference.model)
    for k in ("kld", "kld_rev", "nll_ref", "nll_quant", "dp"):
        np.testing.assert_allclose(r.per_token[k], ind[k], err_msg=k, **TOL)
    np.testing.assert_array_equal(r.per_token["top1"], ind["top1"])
    assert r.metrics["fid.kld_mean"] > 1e-4
    last = r.per_token["window"] == exact.n_windows - 1
    assert last.sum() == lengths[-1] - 1 - scored_first(int(lengths[-1]), 0.5)


def test_topk_cache_is_close_to_exact_and_smaller(reference, caches, perturbed, tmp_path):
    root, topk, exact = caches
    quant = perturbed(reference.model)
    rt = measure(quant, topk, tokenizer=reference.tokenizer, progress=False)
    re_ = measure(quant, exact, tokenizer=reference.tokenizer, progress=False)
    for k in ("nll_ref", "nll_quant", "dp"):  # the true token's log-prob is stored exactly
        np.testing.assert_allclose(rt.per_token[k], re_.per_token[k], **TOL)
    np.testing.assert_array_equal(rt.per_token["top1"], re_.per_token["top1"])
    # the sampled tail is unbiased: close to exact on the mean even for this flat random model
    assert rt.metrics["fid.kld_mean"] == pytest.approx(re_.metrics["fid.kld_mean"], rel=0.1)
    assert rt.metrics["fid.kld_rev_mean"] == pytest.approx(re_.metrics["fid.kld_rev_mean"], rel=0.1)
    # one tail bucket (no samples) is a lower bound, per token
    bucket_settings = dataclasses.replace(topk.settings, tail_samples=0)
    bucket = build_cache(reference.model, reference.tokenizer, bucket_settings, reference.fingerprint, root)
    rb = measure(quant, bucket, tokenizer=reference.tokenizer, progress=False)
    assert np.all(rb.per_token["kld"] <= re_.per_token["kld"] + 1e-9)
    assert rb.metrics["fid.kld_mean"] < rt.metrics["fid.kld_mean"]
    assert topk.nbytes() < exact.nbytes() / 5 and topk.nbytes() < topk.full_dump_nbytes()


def test_scoring_convention_is_configurable(reference, tmp_path):
    s = FidelitySettings(corpus="code", context=64, topk=8, max_tokens=256, batch_size=4, scored_fraction=1.0)
    c = build_cache(reference.model, reference.tokenizer, s, reference.fingerprint, tmp_path)
    assert c.n_scored == 4 * 63  # every position predicts the next token
    h = build_cache(
        reference.model,
        reference.tokenizer,
        dataclasses.replace(s, scored_fraction=0.5),
        reference.fingerprint,
        tmp_path,
    )
    assert h.n_scored == 4 * 31  # llama.cpp: logits 32..62 of each 64-token window
    assert h.key != c.key


def test_cache_is_reused_and_tampering_is_refused_then_rebuilt(reference, settings, tmp_path):
    c1 = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, tmp_path)
    stamp = c1.manifest["created"], (c1.path / "topk_lp.npy").stat().st_mtime_ns
    c2 = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, tmp_path)
    assert c2.key == c1.key and (c2.manifest["created"], (c2.path / "topk_lp.npy").stat().st_mtime_ns) == stamp
    arr = np.load(c1.path / "topk_lp.npy")
    arr[0, 0] += 1.0
    np.save(c1.path / "topk_lp.npy", arr)
    with pytest.raises(CacheMismatchError, match="content hash of topk_lp"):
        ReferenceCache.load(c1.path)
    c3 = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, tmp_path)
    ReferenceCache.load(c3.path)  # rebuilt, valid again
    with pytest.raises(CacheMismatchError, match="reference_fingerprint"):
        ReferenceCache.load(c3.path, expect={"reference_fingerprint": "another"})
    manifest = json.loads((c3.path / "manifest.json").read_text())
    manifest["tokenizer_fingerprint"] = "0" * 16
    (c3.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="key does not match"):
        ReferenceCache.load(c3.path)


def test_other_reference_fingerprint_gets_its_own_cache(reference, settings, tmp_path):
    a = get_or_build(reference.model, reference.tokenizer, settings, reference.fingerprint, tmp_path)
    b = get_or_build(reference.model, reference.tokenizer, settings, "other-reference", tmp_path)
    assert a.key != b.key and a.path != b.path


# ------------------------------------------------------------------------------------------- bad input


def test_corpus_shorter_than_one_window(reference, tmp_path, monkeypatch):
    prose = tmp_path / "prose"
    prose.mkdir()
    (prose / "short.txt").write_text("A very short English text.")
    monkeypatch.setenv("QUANTFID_PROSE_DIR", str(prose))
    s = FidelitySettings(corpus="prose", context=64, max_tokens=1024)
    with pytest.raises(FidelityError, match=r"fidelity.corpus='prose' has \d+ tokens, fewer than one window"):
        build_cache(reference.model, reference.tokenizer, s, reference.fingerprint, tmp_path)


def test_context_longer_than_the_model_supports(reference, caches, tmp_path, perturbed):
    s = FidelitySettings(corpus="code", context=256, max_tokens=1024)
    with pytest.raises(FidelityError, match="max_position_embeddings=128"):
        build_cache(reference.model, reference.tokenizer, s, reference.fingerprint, tmp_path)
    short = perturbed(reference.model)
    short.config.max_position_embeddings = 32
    with pytest.raises(FidelityError, match=r"fidelity\.context=64 is longer"):
        measure(short, caches[1], progress=False)


def test_tokenizer_mismatch_is_refused(reference, caches, make_tokenizer):
    other = make_tokenizer(n_files=5, vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="must share one tokenizer"):
        measure(reference.model, caches[1], tokenizer=other, progress=False)


def test_nan_logits_are_a_failed_measurement_not_a_crash(reference, caches, perturbed):
    broken = perturbed(reference.model)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    r = measure(broken, caches[1], tokenizer=reference.tokenizer, progress=False)
    assert not r.ok and "NaN/inf logits" in r.error and r.metrics == {}


def test_vocabulary_mismatch_is_refused(reference, caches):
    class Wider(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = torch.nn.functional.pad(out.logits, (0, 3))
            return out

    with pytest.raises(FidelityError, match="share one vocabulary"):
        measure(Wider(reference.model), caches[1], progress=False)


def test_settings_validation_names_the_field():
    with pytest.raises(FidelityError, match=r"fidelity\.corpus='wiki'"):
        FidelitySettings(corpus="wiki")
    with pytest.raises(FidelityError, match=r"fidelity\.scored_fraction"):
        FidelitySettings(scored_fraction=0.0)
    with pytest.raises(FidelityError, match=r"fidelity\.topk"):
        FidelitySettings(topk=-1)


# ------------------------------------------------------------------------------------------- per prompt


def test_per_prompt_kld(reference, perturbed):
    tok, ref = reference.tokenizer, reference.model
    prompts = ["def f(x):\n    return", "import os\n", "x = [1, 2, 3]\nprint(len(x))"]
    completions = [" x + 1", "import sys", ""]
    assert per_prompt_kld(ref, ref, tok, prompts, completions)[:2] == [(0.0, 0.0), (0.0, 0.0)]
    quant = perturbed(ref)
    got = per_prompt_kld(ref, quant, tok, prompts, completions, batch_size=2)
    for (kp, kc), prompt, completion in zip(got, prompts, completions, strict=True):
        p_ids = tok(prompt)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            lp = torch.log_softmax(ref(input_ids=ids).logits[0].double(), -1).numpy()
            lq = torch.log_softmax(quant(input_ids=ids).logits[0].double(), -1).numpy()
        kl = special.rel_entr(np.exp(lp), np.exp(lq)).sum(-1)
        assert kp == pytest.approx(kl[: len(p_ids)].mean(), rel=1e-5, abs=1e-7)
        if c_ids:
            assert kc == pytest.approx(kl[len(p_ids) - 1 : len(p_ids) - 1 + len(c_ids)].mean(), rel=1e-5, abs=1e-7)
        else:
            assert np.isnan(kc)
        assert kp > 0
    with pytest.raises(FidelityError, match="2 prompts but 1"):
        per_prompt_kld(ref, quant, tok, prompts[:2], completions[:1])
