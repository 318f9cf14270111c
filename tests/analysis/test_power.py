"""Power planning numbers: against statsmodels, closed forms, and simulation with the test the verdicts use."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower

from quantfid.analysis.equivalence import tango_ci, tango_p0
from quantfid.analysis.power import (
    min_detectable_difference,
    prompts_for_difference,
    prompts_for_equivalence,
    tost_power,
    zero_flip_floor,
)

Z975, Z80 = stats.norm.ppf(0.975), stats.norm.ppf(0.8)


def test_mdd_is_the_textbook_value_and_statsmodels_power_at_it_is_80_percent():
    n, vol = 420, np.array([40.0, 0.0, 120.0])
    mdd = min_detectable_difference(vol, n)
    sigma = np.sqrt(np.maximum(vol, 1) / n)  # no flip: one assumed
    np.testing.assert_allclose(mdd, (Z975 + Z80) * sigma / np.sqrt(n), rtol=2e-3)
    for m, s in zip(mdd, sigma, strict=True):
        assert NormalIndPower().power(m / s, nobs1=n, alpha=0.05, ratio=0) == pytest.approx(0.8, abs=1e-4)


def test_mdd_by_simulation_with_the_score_test():
    """At a true difference equal to the mdd the paired score test rejects about 80% of the time."""
    rng = np.random.default_rng(3)
    n, pi_d = 1000, 0.12
    mdd = float(min_detectable_difference(pi_d * n, n))
    p12, p21 = (pi_d + mdd) / 2, (pi_d - mdd) / 2  # gained, lost probabilities: difference = mdd
    draws = rng.multinomial(n, [p12, p21, 1 - pi_d], size=4000)
    power = np.mean(tango_p0(draws[:, 0], draws[:, 1]) < 0.05)
    assert 0.77 <= power <= 0.83


def test_prompts_for_equivalence_bisection_and_closed_form():
    d, vol, n = np.array([0.0, 0.005, 0.03]), np.array([30.0, 30.0, 30.0]), 420
    need = prompts_for_equivalence(d, vol, n, delta=0.02)
    assert np.isinf(need[2])  # |difference| beyond the margin: no sample size shows equivalence
    sigma = np.sqrt(30 / 420 - d[:2] ** 2)
    for k, s, dd in zip(need[:2], sigma, d[:2], strict=True):
        assert tost_power(dd, s, k, 0.02) >= 0.8 > tost_power(dd, s, k - 2, 0.02)
    # at a true difference of 0 both one-sided tests must pass: n = ((z_.975 + z_.9) sigma / delta)^2, nearly
    closed = ((Z975 + stats.norm.ppf(0.9)) * sigma[0] / 0.02) ** 2
    assert need[0] == pytest.approx(closed, rel=0.02)


def test_prompts_for_equivalence_by_simulation():
    """At the planned n, Tango's CI lies inside +-delta in about 80% of simulated benchmarks."""
    rng = np.random.default_rng(5)
    pi_d, d_true, delta = 0.05, 0.005, 0.02
    n = int(prompts_for_equivalence(d_true, pi_d * 1000, 1000, delta))
    p12, p21 = (pi_d + d_true) / 2, (pi_d - d_true) / 2
    draws = rng.multinomial(n, [p12, p21, 1 - pi_d], size=3000)
    lo, hi = tango_ci(draws[:, 0], draws[:, 1], np.full(3000, n))
    assert 0.76 <= np.mean((lo > -delta) & (hi < delta)) <= 0.85


def test_prompts_for_difference_connor_by_hand():
    # pi_d = 0.2, d = 0.05: n = (1.95996 sqrt(.2) + 0.84162 sqrt(.2 - .0025))^2 / .0025 = 1.25054^2 / .0025 = 625.5
    n = prompts_for_difference(0.05, 0.2 * 1000, 1000)
    hand = (Z975 * np.sqrt(0.2) + Z80 * np.sqrt(0.2 - 0.0025)) ** 2 / 0.0025
    assert float(n) == np.ceil(hand) == 626
    assert np.isinf(prompts_for_difference(0.0, 50, 1000))


def test_zero_flip_floor_matches_tango():
    n = zero_flip_floor(0.02)
    assert n == 189
    _, hi = tango_ci([0, 0], [0, 0], [n, n - 1])
    assert hi[0] < 0.02 <= hi[1]
