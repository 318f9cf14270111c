"""llama.cpp's own KL-divergence statistics (``llama-perplexity --kl-divergence``), computed from logits.

A transcription of tools/perplexity/perplexity.cpp (llama-cpp-python 0.3.36's llama.cpp) so quantfid's numbers can
be checked against what llama.cpp users read, on the same tokens, where the perplexity tool itself is not built:

- the base run stores each position's log-probabilities in 16 bits (``log_softmax`` with ``uint16_t * log_prob``):
  a per-position ``scale = (max - min)/65535`` and ``min_log_prob``, logits clamped below at ``max - 16``, each
  logit rounded to the nearest of 65,536 levels; tokens more than 16 nats below the top all get the floor value;
- the quant run then sums, per position, ``p_base * (log p_base - log q)`` over tokens with ``log p_base > -16``
  only (float32 arithmetic, double accumulation), counts "same top" against the *stored* base's argmax, and takes
  the NLLs of the next token (the base's from its 16-bit copy);
- statistics are printed as in ``kl_divergence()``: mean ± standard error, ln PPL ratio with the covariance term,
  percentiles by linear interpolation. :func:`format_log` writes those lines, so the text goes through the same
  ``--kld-log`` import (quantfid.analysis.external) as a real llama-perplexity log.

Scored positions are llama.cpp's: the second half of each chunk (``first = n_ctx/2`` up to ``n_ctx - 2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BaseLogProbs:
    """One position's base log-probabilities as perplexity.cpp stores them (16 bits + two floats)."""

    scale: np.float32
    min_log_prob: np.float32
    codes: np.ndarray  # uint16, one per vocabulary entry

    def log_probs(self) -> np.ndarray:
        """What the KLD pass reads back: ``scale * code + min_log_prob`` in float32."""
        return (self.scale * self.codes.astype(np.float32) + self.min_log_prob).astype(np.float32)


def store_base(logits: np.ndarray) -> BaseLogProbs:
    """perplexity.cpp ``log_softmax(n_vocab, logits, uint16_t * log_prob, tok)`` for one position."""
    x = logits.astype(np.float32)
    max_logit, min_logit = np.float32(x.max()), np.float32(x.min())
    min_logit = np.float32(max(min_logit, max_logit - np.float32(16)))
    sum_exp = float(np.exp(x - max_logit, dtype=np.float32).astype(np.float64).sum())
    log_sum_exp = np.float32(math.log(sum_exp))
    min_log_prob = np.float32(min_logit - max_logit - log_sum_exp)
    scale = np.float32((max_logit - min_logit) / np.float32(65535))
    if scale:
        inv = np.float32(1) / scale
        codes = np.where(x > min_logit, np.rint(inv * (x - min_logit)), 0).astype(np.uint16)
    else:
        codes = np.zeros(x.shape, dtype=np.uint16)
    return BaseLogProbs(scale, min_log_prob, codes)


@dataclass
class KldSums:
    """perplexity.cpp's ``kl_divergence_result`` plus the per-position values its percentiles are taken from."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[float] = field(default_factory=list)
    p_diff_values: list[float] = field(default_factory=list)

    def add(self, logits: np.ndarray, base: BaseLogProbs, tok: int) -> None:
        """perplexity.cpp ``log_softmax(n_vocab, logits, base_log_prob, tok, kld)`` for one position."""
        x = logits.astype(np.float32)
        imax = int(np.argmax(x))
        max_logit = np.float32(x[imax])
        sum_exp = float(np.exp(x - max_logit, dtype=np.float32).astype(np.float64).sum())
        log_sum_exp = np.float32(math.log(sum_exp))
        nll = float(np.float32(max_logit + log_sum_exp - x[tok]))
        lpb = base.log_probs()
        nll_base = float(-lpb[tok])
        self.sum_nll += nll
        self.sum_nll2 += nll * nll
        self.sum_nll_base += nll_base
        self.sum_nll_base2 += nll_base * nll_base
        self.sum_nll_nll_base += nll * nll_base
        norm = np.float32(max_logit + log_sum_exp)
        keep = lpb > np.float32(-16)
        p_base = np.exp(lpb[keep], dtype=np.float32)
        kld = float((p_base * (lpb[keep] - x[keep] + norm)).astype(np.float64).sum())
        self.sum_kld += kld
        self.sum_kld2 += kld * kld
        self.count += 1
        if imax == int(np.argmax(lpb)):  # the first maximum, as the C++ loop's strict '>'
            self.n_same_top += 1
        p_diff = float(np.float32(math.exp(-nll)) - np.float32(math.exp(-nll_base)))
        self.sum_p_diff += p_diff
        self.sum_p_diff2 += p_diff * p_diff
        self.sum_p_diff4 += p_diff**4
        self.kld_values.append(kld)
        self.p_diff_values.append(p_diff)


def kld_sums(base_logits: list[np.ndarray], quant_logits: list[np.ndarray], chunks: list[np.ndarray]) -> KldSums:
    """Accumulate over chunks (token ids, the base's and the quant's logits per position), scoring llama.cpp's
    positions ``n_ctx/2 .. n_ctx-2`` of each chunk (each predicts the next token)."""
    sums = KldSums()
    for base, quant, toks in zip(base_logits, quant_logits, chunks, strict=True):
        n = len(toks)
        for i in range(n // 2, n - 1):
            sums.add(quant[i], store_base(base[i]), int(toks[i + 1]))
    return sums


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    """perplexity.cpp ``mean_and_uncertainty``."""
    mean = s / n
    var = s2 / n - mean * mean
    return mean, math.sqrt(max(var, 0.0) / (n - 1)) if n > 1 else 0.0


def _percentile(values: list[float], fraction: float) -> float:
    if fraction <= 0:
        return values[0]
    if fraction >= 1:
        return values[-1]
    p = fraction * (len(values) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]


def format_log(s: KldSums) -> str:
    """The statistics block ``kl_divergence()`` prints, line for line (the lines the --kld-log import parses)."""
    n = s.count
    lp, lp_unc = _mean_unc(s.sum_nll, s.sum_nll2, n)
    lb, lb_unc = _mean_unc(s.sum_nll_base, s.sum_nll_base2, n)
    cov = (s.sum_nll_nll_base / n - (s.sum_nll / n) * (s.sum_nll_base / n)) / (n - 1)
    ppl, ppl_b = math.exp(lp), math.exp(lb)
    ratio, ratio_unc = lp - lb, math.sqrt(max(lp_unc**2 + lb_unc**2 - 2.0 * cov, 0.0))
    ppl_cov = ppl * ppl_b * cov
    kld, kld_unc = _mean_unc(s.sum_kld, s.sum_kld2, n)
    kv, pv = sorted(s.kld_values), sorted(s.p_diff_values)
    median = 0.5 * (kv[n // 2] + kv[n // 2 - 1]) if n % 2 == 0 else kv[n // 2]
    pd, pd_unc = _mean_unc(s.sum_p_diff, s.sum_p_diff2, n)
    mse, mse_unc = _mean_unc(s.sum_p_diff2, s.sum_p_diff4, n)
    rms = math.sqrt(mse)
    same = s.n_same_top / n
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {ppl:10.6f} ± {ppl * lp_unc:10.6f}",
        f"Mean PPL(base)                : {ppl_b:10.6f} ± {ppl_b * lb_unc:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {100.0 * cov / (lp_unc * lb_unc):6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6f} ± {ratio_unc:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {math.exp(ratio):10.6f} ± {math.exp(ratio) * ratio_unc:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {ppl - ppl_b:10.6f} ± "
        f"{math.sqrt(max((ppl * lp_unc) ** 2 + (ppl_b * lb_unc) ** 2 - 2.0 * ppl_cov, 0.0)):10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {kld:10.6f} ± {kld_unc:10.6f}",
        f"Maximum KLD: {kv[-1]:10.6f}",
        *(f"{100 * f:4.1f}%   KLD: {_percentile(kv, f):10.6f}" for f in (0.999, 0.99, 0.95, 0.90)),
        f"Median  KLD: {median:10.6f}",
        *(f"{100 * f:4.1f}%   KLD: {_percentile(kv, f):10.6f}" for f in (0.10, 0.05, 0.01, 0.001)),
        f"Minimum KLD: {kv[0]:10.6f}",
        "",
        "====== Token probability statistics ======",
        f"Mean    Δp: {100.0 * pd:6.3f} ± {100.0 * pd_unc:5.3f} %",
        f"Maximum Δp: {100.0 * pv[-1]:6.3f}%",
        f"Median  Δp: {100.0 * _percentile(pv, 0.5):6.3f}%",
        f"Minimum Δp: {100.0 * pv[0]:6.3f}%",
        f"RMS Δp    : {100.0 * rms:6.3f} ± {100.0 * 0.5 / rms * mse_unc if rms else 0.0:5.3f} %",
        f"Same top p: {100.0 * same:6.3f} ± {100.0 * math.sqrt(same * (1.0 - same) / (n - 1)):5.3f} %",
    ]
    return "\n".join(lines) + "\n"
