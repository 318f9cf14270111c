"""Per-token fidelity arrays and every aggregation of them.

Per token (one scored next-token prediction) against the reference:

- ``kld``      KL(ref || quant) = sum_i p_i (log p_i - log q_i)
- ``kld_rev``  KL(quant || ref)
- ``nll_ref``, ``nll_quant``: negative log-likelihood of the true next token
- ``top1``     the reference's top-1 token is (one of) the quant's top-1 token(s)
- ``dp``       q(true) - p(true) (llama.cpp's delta-p, as a fraction, not a percent)

With a compressed cache the reference is known exactly on its K most probable tokens (the head), plus the total
mass P_t of the rest (the tail) and M tokens j drawn from the tail in proportion to p (systematic sampling) with
their exact log-probs. The head contributes exactly. The tail's KL(ref || quant) is

    sum_tail p_i r_i = P_t - Q_t + P_t * E_{j ~ p_tail}[ r_j + exp(-r_j) - 1 ],   r = log p - log q

an identity (Q_t, the quant's tail mass, is known exactly), whose expectation is estimated from the M samples:
unbiased, and since r + exp(-r) - 1 ~ r^2/2 its noise shrinks with the KL itself (the "k3" control-variate form).
KL(quant || ref) uses 1 - exp(-r)(1 + r) the same way. With M = 0 the tail is one bucket: a lower bound of the
exact KL (log-sum inequality) that misses the KL inside the tail. Exact mode uses the full vocabulary.

Log-probs come from :func:`quantfid.api.divergence.log_probs` (float64, rounded through float32 on both sides: the
cache stores float32), so an identical model gives KLD exactly 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from quantfid.api.divergence import kl_divergence, plogr
from quantfid.api.schema import DP_PERCENTILES, KLD_PERCENTILES

PER_TOKEN_FIELDS = ("kld", "kld_rev", "nll_ref", "nll_quant", "top1", "dp")


def sample_tail(lp: torch.Tensor, head_ids: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """``m`` token ids per row drawn from the distribution outside ``head_ids`` (systematic sampling: one uniform
    offset per row, ``m`` equally spaced points on the tail's CDF), so each token is drawn in proportion to p."""
    p = lp.exp().scatter(-1, head_ids, 0.0)
    cdf = p.cumsum(-1)
    total = cdf[:, -1:]
    offset = torch.rand(lp.shape[0], 1, generator=generator, dtype=torch.float64).to(lp.device)
    u = (torch.arange(m, dtype=torch.float64, device=lp.device)[None, :] + offset) / m * total
    ids = torch.searchsorted(cdf, u, right=True).clamp(max=lp.shape[-1] - 1)
    # a row with no tail mass has nothing to draw: point at the top token (its weight P_t is 0)
    return torch.where(total > 0, ids, head_ids[:, :1].expand(-1, m))


def tail_logmass(lp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the total probability outside ``ids`` (rows of ``lp``), computed without cancellation."""
    masked = lp.scatter(-1, ids, float("-inf"))
    return torch.logsumexp(masked, dim=-1)


def per_token_topk(
    lq: torch.Tensor,
    targets: torch.Tensor,
    ref_ids: torch.Tensor,
    ref_lp: torch.Tensor,
    ref_tail: torch.Tensor,
    ref_target_lp: torch.Tensor,
    sample_ids: torch.Tensor | None = None,
    sample_lp: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token arrays from the quant's log-probs ``lq`` (N x V) and a compressed reference: head ids/log-probs
    (N x K), log tail mass (N), true-token log-prob (N) and optionally M tail samples (N x M ids/log-probs)."""
    lq_k = lq.gather(-1, ref_ids)
    q_tail = tail_logmass(lq, ref_ids).float().double()  # rounded like the cached reference tail
    p_k, q_k = ref_lp.exp(), lq_k.exp()
    p_t, q_t = ref_tail.exp(), q_tail.exp()
    tail_fwd = plogr(p_t, ref_tail, q_tail)  # one bucket: lower bounds
    tail_rev = plogr(q_t, q_tail, ref_tail)
    if sample_ids is not None and sample_ids.shape[-1] > 0:
        r = sample_lp - lq.gather(-1, sample_ids)
        e = torch.exp(-r)
        f = (r + torch.expm1(-r)).mean(-1)  # E[r + e^-r - 1] >= 0
        h = (-torch.expm1(-r) - r * e).mean(-1)  # E[1 - e^-r (1 + r)] >= 0
        sampled = p_t > 0  # no reference mass in the tail: the bucket terms are exact
        tail_fwd = torch.where(sampled, p_t - q_t + p_t * f, tail_fwd)
        tail_rev = torch.where(sampled, q_t - p_t + p_t * h, tail_rev)
    kld = plogr(p_k, ref_lp, lq_k).sum(-1) + tail_fwd
    kld_rev = plogr(q_k, lq_k, ref_lp).sum(-1) + tail_rev
    lq_true = lq.gather(-1, targets[:, None])[:, 0]
    top1 = lq_k[:, 0] >= lq.amax(-1)
    return _finish(kld, kld_rev, lq_true, ref_target_lp, top1)


def per_token_exact(lq: torch.Tensor, targets: torch.Tensor, lp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token arrays against the reference's full-vocabulary log-probs ``lp`` (N x V)."""
    kld = kl_divergence(lp, lq)
    kld_rev = kl_divergence(lq, lp)
    lq_true = lq.gather(-1, targets[:, None])[:, 0]
    lp_true = lp.gather(-1, targets[:, None])[:, 0]
    ref_top = lp.argmax(-1, keepdim=True)
    top1 = lq.gather(-1, ref_top)[:, 0] >= lq.amax(-1)
    return _finish(kld, kld_rev, lq_true, lp_true, top1)


def _finish(kld, kld_rev, lq_true, lp_true, top1) -> dict[str, torch.Tensor]:
    return {
        "kld": kld,
        "kld_rev": kld_rev,
        "nll_ref": -lp_true,
        "nll_quant": -lq_true,
        "top1": top1,
        "dp": lq_true.exp() - lp_true.exp(),
    }


# ---------------------------------------------------------------- aggregations (all from the per-token arrays)




def _sem(x: np.ndarray) -> float:
    """Standard error of the mean (ddof=1); equals llama.cpp's sqrt((E[x^2]-E[x]^2)/(n-1))."""
    return float(stats.sem(x, ddof=1)) if x.size > 1 else float("nan")


def _distribution(name: str, x: np.ndarray, pcts: dict[str, float]) -> dict[str, float]:
    """llama.cpp's summary of one per-token quantity: mean +- standard error, median, extremes, percentiles."""
    out = {f"{name}_mean": float(x.mean()), f"{name}_mean_se": _sem(x), f"{name}_median": float(np.median(x))}
    out[f"{name}_max"], out[f"{name}_min"] = float(x.max()), float(x.min())
    out.update({f"{name}_{label}": float(np.percentile(x, q)) for label, q in pcts.items()})
    return out


def aggregate(per_token: dict[str, np.ndarray], window: np.ndarray) -> dict[str, float]:
    """Every fidelity statistic (``fid.<stat>``, docs/schema.md) from one run's per-token arrays.

    ``window`` gives the window index of each token (for the mean of per-sequence means). Percentiles use linear
    interpolation, as llama.cpp does.
    """
    kld = per_token["kld"].astype(np.float64)
    kld_rev = per_token["kld_rev"].astype(np.float64)
    nll_q = per_token["nll_quant"].astype(np.float64)
    nll_r = per_token["nll_ref"].astype(np.float64)
    top1 = per_token["top1"].astype(np.float64)
    dp = per_token["dp"].astype(np.float64)
    n = kld.size
    m: dict[str, float] = {"n_tokens": float(n)}

    # KLD aggregations (paper variants) and llama.cpp's KLD statistics
    m.update(_distribution("kld", kld, KLD_PERCENTILES))
    _, inverse = np.unique(window, return_inverse=True)
    seq_means = np.bincount(inverse, weights=kld) / np.bincount(inverse)
    m["kld_seqmean"] = float(seq_means.mean())
    m["kld_rev_mean"] = float(kld_rev.mean())
    m["kld_rev_mean_se"] = _sem(kld_rev)

    # perplexity formulations, with llama.cpp's covariance-aware errors
    mq, mr = nll_q.mean(), nll_r.mean()
    se_q, se_r = _sem(nll_q), _sem(nll_r)
    cov = float(np.cov(nll_q, nll_r, ddof=1)[0, 1]) / n if n > 1 else float("nan")
    ppl_q, ppl_r = math.exp(mq), math.exp(mr)
    m["ppl_quant"], m["ppl_quant_se"] = ppl_q, ppl_q * se_q
    m["ppl_ref"], m["ppl_ref_se"] = ppl_r, ppl_r * se_r
    m["ln_ppl_ratio"] = float(mq - mr)
    m["ln_ppl_ratio_se"] = math.sqrt(max(se_q**2 + se_r**2 - 2.0 * cov, 0.0))
    m["ln_ppl_cor"] = cov / (se_q * se_r) if se_q > 0 and se_r > 0 else float("nan")
    m["ppl_ratio"] = math.exp(m["ln_ppl_ratio"])
    m["ppl_ratio_se"] = m["ppl_ratio"] * m["ln_ppl_ratio_se"]
    m["ppl_diff"] = ppl_q - ppl_r
    ppl_cov = ppl_q * ppl_r * cov
    m["ppl_diff_se"] = math.sqrt(max(m["ppl_quant_se"] ** 2 + m["ppl_ref_se"] ** 2 - 2.0 * ppl_cov, 0.0))

    # top-1 agreement ("same top p") with its binomial error
    p = float(top1.mean())
    m["top1_agree"] = p
    m["top1_agree_se"] = math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")

    # delta-p of the true token
    m.update(_distribution("dp", dp, DP_PERCENTILES))
    mse = float((dp**2).mean())
    m["rms_dp"] = math.sqrt(mse)
    m["rms_dp_se"] = 0.5 / m["rms_dp"] * _sem(dp**2) if m["rms_dp"] > 0 else 0.0
    return {f"fid.{k}": v for k, v in m.items()}
