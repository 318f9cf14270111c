"""Power of the paired comparison with the reference: what the benchmark could have seen, and what it would take.

Per quant and unit, from its observed discordance (the share of prompts whose outcome flipped, pi_d = volume / n) and
accuracy difference ``diff``:

- **minimal detectable difference** (``mdd``): the smallest true accuracy difference the two-sided paired test at
  level alpha detects with the given power on these n prompts: ``mdd = es * sqrt(pi_d)`` where ``es`` is the
  standardised effect a one-sample z-test detects (statsmodels ``NormalIndPower(ratio=0)``: es = (z_{1-alpha/2} +
  z_power)/sqrt(n)), and sqrt(pi_d) the standard deviation of a prompt's paired difference (-1, 0 or +1) near 0;
- **prompts to show equivalence** (``n_equivalence``): the n at which the two one-sided tests behind a (1-alpha) CI
  inside +-delta succeed with the given power, if the true difference were the observed one and the discordance stayed:
  power(n) = Phi((delta - d)/se - z) + Phi((delta + d)/se - z) - 1 with se = sqrt((pi_d - d^2)/n), z = z_{1-alpha/2};
  infinite when |diff| >= delta (such a quant is probably not equivalent at this margin);
- **prompts to show a difference** (``n_difference``): Connor's (1987) sample size for McNemar's test at the observed
  difference: n = (z_{1-alpha/2} sqrt(pi_d) + z_power sqrt(pi_d - d^2))^2 / d^2; infinite at d = 0.

A quant with no flip at all has pi_d = 0 and no variance to plan with: one discordant prompt is assumed (pi_d = 1/n).
The prompts needed to *resolve* an indeterminate quant are the smaller of the two (whichever verdict it would reach
first). These are planning numbers under the normal approximation, not guarantees.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

DEFAULT_POWER = 0.8


def detectable_effect(n: float, alpha: float, power: float = DEFAULT_POWER) -> float:
    """Standardised effect a two-sided one-sample z-test detects with ``power`` on n observations (statsmodels)."""
    from statsmodels.stats.power import NormalIndPower

    if not n > 0:
        return float("nan")
    return float(NormalIndPower().solve_power(effect_size=None, nobs1=float(n), alpha=alpha, power=power, ratio=0.0,
                                              alternative="two-sided"))  # fmt: skip


def _discordance(volume, n) -> np.ndarray:
    v = np.maximum(np.asarray(volume, float), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.minimum(v / np.asarray(n, float), 1.0)


def min_detectable_difference(volume, n, alpha: float = 0.05, power: float = DEFAULT_POWER) -> np.ndarray:
    """``mdd`` per quant (vectorised over quants; ``n`` may vary, the effect is solved once per distinct n)."""
    n = np.broadcast_to(np.asarray(n, float), np.shape(volume))
    es = {float(k): detectable_effect(k, alpha, power) for k in np.unique(n)}
    return np.array([es[float(k)] for k in n.ravel()]).reshape(n.shape) * np.sqrt(_discordance(volume, n))


def tost_power(d, sigma, n, delta: float, alpha: float = 0.05) -> np.ndarray:
    """Normal-approximation power of "the (1-alpha) CI of the mean paired difference lies inside +-delta"."""
    z = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.asarray(sigma, float) / np.sqrt(np.asarray(n, float))
        p = stats.norm.cdf((delta - d) / se - z) + stats.norm.cdf((delta + d) / se - z) - 1.0
    return np.clip(p, 0.0, 1.0)


def prompts_for_equivalence(diff, volume, n, delta: float, alpha: float = 0.05, power: float = DEFAULT_POWER
                            ) -> np.ndarray:  # fmt: skip
    """``n_equivalence`` per quant (bisection on the monotone TOST power; inf where |diff| >= delta)."""
    d = np.abs(np.asarray(diff, float))
    pi = _discordance(volume, n)
    sigma = np.sqrt(np.maximum(pi - d * d, 1e-12))
    ok = np.isfinite(d) & (d < delta)
    lo = np.zeros(d.shape)  # log10 n
    hi = np.full(d.shape, 12.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        enough = tost_power(d, sigma, 10.0**mid, delta, alpha) >= power
        lo, hi = np.where(enough, lo, mid), np.where(enough, mid, hi)
    out = np.ceil(10.0**hi)
    return np.where(ok & (hi < 12.0), out, np.inf)


def prompts_for_difference(diff, volume, n, alpha: float = 0.05, power: float = DEFAULT_POWER) -> np.ndarray:
    """``n_difference`` per quant: Connor's McNemar sample size at the observed difference (inf at diff = 0)."""
    d = np.abs(np.asarray(diff, float))
    pi = np.maximum(_discordance(volume, n), d)
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (za * np.sqrt(pi) + zb * np.sqrt(np.maximum(pi - d * d, 0.0))) ** 2 / (d * d)
    return np.where(d > 0, np.ceil(out), np.inf)


def zero_flip_floor(delta: float, level: float = 0.95) -> int:
    """Fewest prompts at which a unit with no flip at all can be shown equivalent at +-delta: Tango's CI with no
    discordant pair has half-width z^2 / (n + z^2) < delta."""
    z2 = stats.norm.ppf(0.5 + level / 2) ** 2
    return int(np.floor(z2 * (1 - delta) / delta)) + 1
