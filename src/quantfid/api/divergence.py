"""The token-level KL divergence, defined once: the fidelity stage, the quant verification and the per-prompt KLD
all compute it here.

Log-probabilities are computed in float64 from the model's logits and rounded through float32, so the reference
cache (float32 on disk) and a live forward pass of the same model give KLD exactly 0.
"""

from __future__ import annotations

import torch

#: The precision of every log-softmax quantfid computes, whatever the model's dtype: a bfloat16 or float16
#: reference's logits are upcast before normalising (recorded in each run as ``fidelity.logprob_dtype``).
LOGPROB_DTYPE = "float64"


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """float64 log-softmax rounded through float32: the one definition used by cache and measurement alike."""
    return torch.log_softmax(logits.double(), dim=-1).float().double()


def plogr(p: torch.Tensor, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """``p * (lp - lq)`` with ``0 * anything = 0``, so ``-inf`` log-probs where ``p = 0`` contribute nothing."""
    return torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=p.dtype, device=p.device))


def kl_divergence(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) over the last axis, from log-probabilities ``lp`` and ``lq``."""
    return plogr(lp.exp(), lp, lq).sum(-1)


def token_kld(reference_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(reference || quant) from raw logits (any leading shape), through :func:`log_probs`."""
    return kl_divergence(log_probs(reference_logits), log_probs(quant_logits.to(reference_logits.device)))
