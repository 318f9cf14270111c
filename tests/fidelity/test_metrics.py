"""Every fidelity metric against an independent float64 numpy/scipy implementation, plus edge cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats

from quantfid.api.divergence import log_probs
from quantfid.fidelity.cache import bad_logits
from quantfid.fidelity.metrics import (
    aggregate,
    per_token_exact,
    per_token_topk,
    sample_tail,
    tail_logmass,
)

N, V, K = 400, 300, 20
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _np_logsoftmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - special.logsumexp(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal((N, V)) * 3).astype(np.float32)
    quant = (ref + rng.standard_normal((N, V)) * 0.3).astype(np.float32)
    targets = rng.integers(0, V, N)
    return ref, quant, targets


def _topk_cache(ref: np.ndarray, targets: np.ndarray):
    lp = log_probs(torch.from_numpy(ref))
    top_lp, top_ids = lp.topk(K, dim=-1)
    tail = tail_logmass(lp, top_ids).float().double()
    return top_ids, top_lp, tail, lp.gather(-1, torch.from_numpy(targets)[:, None])[:, 0]


def test_exact_per_token_vs_float64_scipy(logits):
    ref, quant, targets = logits
    per = per_token_exact(
        log_probs(torch.from_numpy(quant)), torch.from_numpy(targets), log_probs(torch.from_numpy(ref))
    )
    lp, lq = _np_logsoftmax(ref), _np_logsoftmax(quant)
    p, q = np.exp(lp), np.exp(lq)
    np.testing.assert_allclose(per["kld"].numpy(), special.rel_entr(p, q).sum(-1), **TOL)
    np.testing.assert_allclose(per["kld"].numpy(), stats.entropy(p, q, axis=-1), **TOL)
    np.testing.assert_allclose(per["kld_rev"].numpy(), special.rel_entr(q, p).sum(-1), **TOL)
    rows = np.arange(N)
    np.testing.assert_allclose(per["nll_ref"].numpy(), -lp[rows, targets], **TOL)
    np.testing.assert_allclose(per["nll_quant"].numpy(), -lq[rows, targets], **TOL)
    np.testing.assert_allclose(per["dp"].numpy(), q[rows, targets] - p[rows, targets], **TOL)
    np.testing.assert_array_equal(per["top1"].numpy(), ref.argmax(-1) == quant.argmax(-1))
    assert 0 < per["top1"].numpy().mean() < 1


def test_topk_per_token_vs_float64_bucketed(logits):
    """Top-K + tail: KL between the distributions coarsened to the reference's top-K tokens + one tail bucket."""
    ref, quant, targets = logits
    ids, top_lp, tail, tgt = _topk_cache(ref, targets)
    per = per_token_topk(log_probs(torch.from_numpy(quant)), torch.from_numpy(targets), ids, top_lp, tail, tgt)
    lp, lq = _np_logsoftmax(ref), _np_logsoftmax(quant)
    p, q = np.exp(lp), np.exp(lq)
    idx = np.argsort(-lp, axis=-1)[:, :K]
    pk, qk = np.take_along_axis(p, idx, -1), np.take_along_axis(q, idx, -1)
    pb = np.concatenate([pk, 1 - pk.sum(-1, keepdims=True)], -1)
    qb = np.concatenate([qk, 1 - qk.sum(-1, keepdims=True)], -1)
    np.testing.assert_allclose(per["kld"].numpy(), special.rel_entr(pb, qb).sum(-1), **TOL)
    np.testing.assert_allclose(per["kld_rev"].numpy(), special.rel_entr(qb, pb).sum(-1), **TOL)
    rows = np.arange(N)
    np.testing.assert_allclose(per["nll_ref"].numpy(), -lp[rows, targets], **TOL)
    np.testing.assert_allclose(per["dp"].numpy(), q[rows, targets] - p[rows, targets], **TOL)
    np.testing.assert_array_equal(per["top1"].numpy(), ref.argmax(-1) == quant.argmax(-1))
    # bucketing never overstates the KL (log-sum inequality) and the exact value is close at this K
    exact = special.rel_entr(p, q).sum(-1)
    assert np.all(per["kld"].numpy() <= exact + 1e-9)


def test_sampled_tail_vs_float64_formula_and_unbiased(logits):
    """Head exact + M tail samples: the k3 identity on the samples; its mean over draws is the exact KL."""
    ref, quant, targets = logits
    ids, top_lp, tail, tgt = _topk_cache(ref, targets)
    lp, lq = log_probs(torch.from_numpy(ref)), log_probs(torch.from_numpy(quant))
    sids = sample_tail(lp, ids, 16, torch.Generator().manual_seed(0))
    head = ids.numpy()
    for row in range(5):  # samples never come from the head
        assert not set(sids[row].tolist()) & set(head[row].tolist())
    per = per_token_topk(lq, torch.from_numpy(targets), ids, top_lp, tail, tgt, sids, lp.gather(-1, sids))
    nlp, nlq = _np_logsoftmax(ref), _np_logsoftmax(quant)
    p, q = np.exp(nlp), np.exp(nlq)
    pk, qk = np.take_along_axis(p, head, -1), np.take_along_axis(q, head, -1)
    pt, qt = 1 - pk.sum(-1), 1 - qk.sum(-1)
    r = np.take_along_axis(nlp, sids.numpy(), -1) - np.take_along_axis(nlq, sids.numpy(), -1)
    fwd = special.rel_entr(pk, qk).sum(-1) + pt - qt + pt * (r + np.exp(-r) - 1).mean(-1)
    rev = special.rel_entr(qk, pk).sum(-1) + qt - pt + pt * (1 - np.exp(-r) * (1 + r)).mean(-1)
    np.testing.assert_allclose(per["kld"].numpy(), fwd, **TOL)
    np.testing.assert_allclose(per["kld_rev"].numpy(), rev, **TOL)
    # unbiased: averaged over many independent draws, the estimate approaches the exact KL of every token
    exact = special.rel_entr(p, q).sum(-1)
    est = np.mean(
        [
            per_token_topk(lq, torch.from_numpy(targets), ids, top_lp, tail, tgt, s, lp.gather(-1, s))["kld"].numpy()
            for s in (sample_tail(lp, ids, 16, torch.Generator().manual_seed(i)) for i in range(1, 41))
        ],
        axis=0,
    )
    assert est.mean() == pytest.approx(exact.mean(), rel=0.01)
    bucket = per_token_topk(lq, torch.from_numpy(targets), ids, top_lp, tail, tgt)["kld"].numpy()
    assert abs(est.mean() - exact.mean()) < 0.2 * abs(bucket.mean() - exact.mean())


def test_aggregate_vs_independent_statistics():
    rng = np.random.default_rng(1)
    n = 1000
    per = {
        "kld": rng.gamma(0.5, 0.02, n),
        "kld_rev": rng.gamma(0.5, 0.02, n),
        "nll_ref": rng.gamma(2.0, 1.0, n),
        "top1": rng.random(n) < 0.9,
        "dp": rng.normal(-0.01, 0.05, n),
    }
    per["nll_quant"] = per["nll_ref"] + rng.normal(0.02, 0.1, n)
    window = np.repeat(np.arange(n // 50), 50)
    m = aggregate(per, window)
    kld, nq, nr, dp = per["kld"], per["nll_quant"], per["nll_ref"], per["dp"]

    def close(name, value):
        assert m[f"fid.{name}"] == pytest.approx(value, rel=1e-6, abs=1e-9), name

    close("kld_mean", kld.sum() / n)
    close("kld_median", sorted(kld)[n // 2 - 1] / 2 + sorted(kld)[n // 2] / 2)
    s = np.sort(kld)
    for name, frac in (("kld_p90", 0.9), ("kld_p99", 0.99), ("kld_p999", 0.999), ("kld_p01", 0.01)):
        pos = frac * (n - 1)  # llama.cpp's percentile: linear between order statistics
        lo = math.floor(pos)
        close(name, s[lo] + (pos - lo) * (s[min(lo + 1, n - 1)] - s[lo]))
    close("kld_max", kld.max())
    close("kld_seqmean", pd.Series(kld).groupby(window).mean().mean())
    close("kld_mean_se", np.sqrt(((kld**2).mean() - kld.mean() ** 2) / (n - 1)))
    close("kld_rev_mean", per["kld_rev"].mean())
    close("ppl_quant", math.exp(nq.mean()))
    close("ppl_ref", math.exp(nr.mean()))
    close("ppl_ratio", math.exp(nq.mean()) / math.exp(nr.mean()))
    close("ln_ppl_ratio", nq.mean() - nr.mean())
    close("ppl_diff", math.exp(nq.mean()) - math.exp(nr.mean()))
    close("ln_ppl_ratio_se", stats.sem(nq - nr))  # covariance-aware error == s.e. of the paired difference
    close("ln_ppl_cor", stats.pearsonr(nq, nr)[0])
    close("ppl_quant_se", math.exp(nq.mean()) * nq.std(ddof=1) / math.sqrt(n))
    close("top1_agree", per["top1"].mean())
    p = per["top1"].mean()
    close("top1_agree_se", math.sqrt(p * (1 - p) / (n - 1)))
    close("dp_mean", dp.mean())
    close("dp_mean_se", dp.std(ddof=1) / math.sqrt(n))
    close("rms_dp", math.sqrt((dp**2).mean()))
    close("rms_dp_se", 0.5 / math.sqrt((dp**2).mean()) * (dp**2).std(ddof=1) / math.sqrt(n))
    close("dp_p25", np.quantile(dp, 0.25))
    # ppl difference error: delta method on the two correlated means
    cov = np.cov(nq, nr, ddof=1)[0, 1] / n
    a, b = math.exp(nq.mean()), math.exp(nr.mean())
    var = (a * stats.sem(nq)) ** 2 + (b * stats.sem(nr)) ** 2 - 2 * a * b * cov
    close("ppl_diff_se", math.sqrt(var))
    assert m["fid.n_tokens"] == n


def test_identical_distributions_give_exactly_zero_with_neg_inf_logits(logits):
    ref, _, targets = logits
    ref = ref.copy()
    ref[:, :7] = -np.inf  # masked tokens in both
    lp = log_probs(torch.from_numpy(ref))
    exact = per_token_exact(lp, torch.from_numpy(targets % 200 + 7), lp)
    assert torch.all(exact["kld"] == 0) and torch.all(exact["kld_rev"] == 0)
    ids, top_lp, tail, tgt = _topk_cache(ref, targets % 200 + 7)
    sids = sample_tail(lp, ids, 8, torch.Generator().manual_seed(0))
    topk = per_token_topk(lp, torch.from_numpy(targets % 200 + 7), ids, top_lp, tail, tgt, sids, lp.gather(-1, sids))
    assert torch.all(topk["kld"] == 0) and torch.all(topk["kld_rev"] == 0)
    assert torch.all(topk["dp"] == 0) and torch.all(topk["top1"])
    assert not torch.isnan(topk["kld"]).any()


def test_quant_neg_inf_where_reference_has_mass_is_infinite_kl(logits):
    ref, quant, targets = logits
    quant = quant.copy()
    quant[0, ref[0].argmax()] = -np.inf
    per = per_token_exact(
        log_probs(torch.from_numpy(quant)), torch.from_numpy(targets), log_probs(torch.from_numpy(ref))
    )
    assert math.isinf(per["kld"][0].item()) and np.isfinite(per["kld"][1:].numpy()).all()


def test_tiny_tail_is_exact_without_cancellation():
    x = torch.tensor([[0.0, -40.0, -45.0, -50.0]], dtype=torch.float64)
    lp = log_probs(x)
    t = tail_logmass(lp, torch.tensor([[0]]))
    expected = special.logsumexp(_np_logsoftmax(x.numpy())[0, 1:])
    assert t.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("value", "bad"), [(float("nan"), True), (float("inf"), True), (float("-inf"), False), (1.0, False)]
)
def test_bad_logits_detects_nan_and_pos_inf(value, bad):
    rows = torch.zeros(3, 5)
    rows[1, 2] = value
    assert bad_logits(rows) is bad
    assert bad_logits(torch.full((2, 3), float("-inf")))  # a row with no finite logit
