"""A bfloat16/float16 reference is measured with float64 log-softmax (rounded through float32), never in its own
precision, and the run says so (``fidelity.logprob_dtype``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantfid.api.divergence import LOGPROB_DTYPE, log_probs
from quantfid.fidelity import FidelitySettings, build_cache, measure
from quantfid.fidelity.cache import batch_input, scored_rows
from quantfid.models.loading import ModelSpec, load_reference


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_reference_uses_float64_log_softmax(tiny_dir, perturbed, tmp_path, dtype):
    ref = load_reference(ModelSpec(str(tiny_dir), dtype=dtype))
    assert next(ref.model.parameters()).dtype == getattr(torch, dtype)
    quant = perturbed(ref.model, scale=0.05)
    settings = FidelitySettings(corpus="code", context=64, topk=0, max_tokens=256, batch_size=4)  # exact
    cache = build_cache(ref.model, ref.tokenizer, settings, ref.fingerprint, cache_dir=tmp_path)
    res = measure(quant, cache, ref.tokenizer, progress=False)
    assert (
        LOGPROB_DTYPE == "float64" and log_probs(torch.zeros(2, 3, dtype=getattr(torch, dtype))).dtype == torch.float64
    )
    # independent float64 implementation from the same half-precision logits (numpy, no quantfid code)
    tokens, lengths = np.asarray(cache.array("tokens")), np.asarray(cache.array("lengths"))
    ids, mask = batch_input(tokens, lengths, ref.tokenizer.pad_token_id)
    with torch.no_grad():
        lr, _ = scored_rows(ref.model(input_ids=ids, attention_mask=mask).logits, ids, lengths, 0.5)
        lq, _ = scored_rows(quant(input_ids=ids, attention_mask=mask).logits, ids, lengths, 0.5)
    assert lr.dtype == getattr(torch, dtype)  # the model computes in half precision...

    def logsoftmax64(x: torch.Tensor) -> np.ndarray:
        a = x.float().numpy().astype(np.float64)
        a = a - a.max(-1, keepdims=True)
        return a - np.log(np.exp(a).sum(-1, keepdims=True))

    p, q = logsoftmax64(lr), logsoftmax64(lq)
    kld = (np.exp(p) * (p - q)).sum(-1)
    np.testing.assert_allclose(res.per_token["kld"], kld, rtol=1e-4, atol=1e-7)  # ...the divergence in float64
    # what a half-precision log-softmax would have reported instead: visibly different on the same logits
    half = torch.log_softmax(lr, -1).double().numpy(), torch.log_softmax(lq, -1).double().numpy()
    kld_half = (np.exp(half[0]) * (half[0] - half[1])).sum(-1)
    assert np.abs(kld_half - kld).max() > 10 * np.abs(res.per_token["kld"] - kld).max()
