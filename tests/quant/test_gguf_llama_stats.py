"""llama.cpp's KLD statistics as perplexity.cpp computes them (16-bit base storage), against float64 definitions.

Pure numpy: no llama.cpp needed. The printed log goes through the --kld-log import like a real llama-perplexity log.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantfid.analysis.external import parse_kld_log
from quantfid.quant.gguf.llama_stats import format_log, kld_sums, store_base


def _lsm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_16_bit_base_storage_rounds_within_half_a_step():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(512) * 4).astype(np.float32)
    base = store_base(logits)
    exact = _lsm(logits)
    lp = base.log_probs().astype(np.float64)
    above = logits > logits.max() - 16
    step = float(base.scale)
    assert step == pytest.approx((logits.max() - max(logits.min(), logits.max() - 16)) / 65535, rel=1e-6)
    assert np.abs(lp[above] - exact[above]).max() <= 0.5 * step + 1e-5
    # everything 16 nats or more below the top is stored at the floor
    assert np.all(lp[~above] == np.float32(base.min_log_prob))


def test_statistics_match_float64_definitions_within_the_storage_effect():
    rng = np.random.default_rng(1)
    n_ctx, vocab, chunks = 64, 300, 3
    # logits within 16 nats of the top (std 1.5 over 300 tokens): no token falls to the stored floor, where
    # llama.cpp's base NLL would be clamped (that effect is checked in the test above)
    base = [(rng.standard_normal((n_ctx, vocab)) * 1.5).astype(np.float32) for _ in range(chunks)]
    quant = [(b + rng.standard_normal(b.shape).astype(np.float32) * 0.3).astype(np.float32) for b in base]
    toks = [rng.integers(0, vocab, n_ctx) for _ in range(chunks)]
    s = kld_sums(base, quant, toks)
    assert s.count == chunks * (n_ctx - 1 - n_ctx // 2)  # llama.cpp scores positions n_ctx/2 .. n_ctx-2
    # float64 definitions over the same positions
    kld, same, nll_q, nll_b = [], [], [], []
    for b, q, t in zip(base, quant, toks, strict=True):
        lb, lq = _lsm(b), _lsm(q)
        for i in range(n_ctx // 2, n_ctx - 1):
            kld.append(float((np.exp(lb[i]) * (lb[i] - lq[i])).sum()))
            same.append(b[i].argmax() == q[i].argmax())
            nll_q.append(-lq[i, t[i + 1]])
            nll_b.append(-lb[i, t[i + 1]])
    got = parse_kld_log(format_log(s), source="emulated")
    assert got["kld_mean"] == pytest.approx(np.mean(kld), rel=1e-3, abs=1e-5)
    assert got["top1_agree"] == pytest.approx(np.mean(same), abs=1e-5)
    assert got["ln_ppl_ratio"] == pytest.approx(np.mean(nll_q) - np.mean(nll_b), abs=1e-4)
    assert got["ppl_quant"] == pytest.approx(math.exp(np.mean(nll_q)), rel=1e-5)
    assert got["kld_max"] == pytest.approx(max(kld), rel=1e-3)
    assert got["kld_mean_se"] == pytest.approx(np.std(kld) / math.sqrt(len(kld) - 1), rel=1e-2)


def test_identical_models_give_zero_kld_up_to_storage():
    rng = np.random.default_rng(2)
    base = [(rng.standard_normal((32, 200)) * 3).astype(np.float32)]
    s = kld_sums(base, base, [rng.integers(0, 200, 32)])
    got = parse_kld_log(format_log(s))
    assert got["top1_agree"] == 1.0
    assert 0 <= got["kld_mean"] <= 5e-6  # the 16-bit storage alone: about 1e-6 (printed with 6 decimals)
    assert abs(got["ln_ppl_ratio"]) < 1e-4
