"""Round-to-nearest against an independent float64 implementation."""

import numpy as np
import pytest
import torch

from quantfid.quant.backends.rtn import rtn_fake_quant, rtn_quantize_


def reference_rtn(w: np.ndarray, bits: int, g: int, symmetric: bool) -> np.ndarray:
    out = np.empty_like(w, dtype=np.float64)
    for r in range(w.shape[0]):
        for c0 in range(0, w.shape[1], g):
            block = w[r, c0 : c0 + g].astype(np.float64)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = max(np.abs(block).max(), 1e-12) / qmax
                out[r, c0 : c0 + g] = np.clip(np.round(block / s), -qmax, qmax) * s
            else:
                qmax = 2**bits - 1
                s = max(block.max() - block.min(), 1e-12) / qmax
                z = np.round(-block.min() / s)
                out[r, c0 : c0 + g] = (np.clip(np.round(block / s) + z, 0, qmax) - z) * s
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_matches_float64_reference(bits, symmetric):
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(bits))
    got = rtn_fake_quant(w, bits, 32, symmetric).double().numpy()
    want = reference_rtn(w.numpy(), bits, 32, symmetric)
    np.testing.assert_allclose(got, want, atol=1e-6)
    levels = len(np.unique(np.round(got[0, :32] / (np.abs(got[0, :32]).max() or 1), 6)))
    assert levels <= 2**bits


def test_rtn_quantize_skips_and_overrides():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    before = [m.weight.clone() for m in model]
    changed = rtn_quantize_(model, bits=2, group_size=32, skip=("1",))
    assert changed == ["0"]
    assert not torch.equal(model[0].weight, before[0])
    assert torch.equal(model[1].weight, before[1])


def test_rtn_rejects_bad_group_and_bits():
    with pytest.raises(ValueError, match="group_size"):
        rtn_fake_quant(torch.randn(4, 100), 4, 32)
    with pytest.raises(ValueError, match="bits"):
        rtn_fake_quant(torch.randn(4, 64), 1, 32)
