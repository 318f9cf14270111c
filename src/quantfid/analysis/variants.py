"""Fidelity variants: families of rank-equivalent variants, the primary variant, and the correction across the grid.

**Families.** Every correlation the analysis reports is a rank correlation, so two variants that rank the cohort's
quants identically (or exactly in reverse) give the same |rho| against every target in every zone: they are one
measurement, not two. They are detected from the data: the rank vector of each variant over the cohort's quants
(values rounded to 12 significant digits, so float noise of ~1e-16 does not split a family) is compared; identical
or exactly reversed rank vectors form a family (reversed members carry ``sign = -1``). Typical members: ``ppl_quant``,
``ppl_ratio``, ``ln_ppl_ratio`` and ``ppl_diff`` at one setting are monotone transforms of each other when the
reference's perplexity is one constant; ``kld_seqmean`` equals ``kld_mean`` when every window has the same number of
scored tokens. A family is named by its representative: the primary variant if it is a member, else the first member
in the paper's order, else the first by name.

**Primary variant.** Chosen explicitly (``--primary-variant``); the default is ``kld_mean@code.256`` (mean KLD at the
code corpus, context 256: the paper's headline variant). When the cohort does not have it (an external table), the
bare ``kld_mean`` column, else the first mean-KLD variant, is used and the summary says so.

**Correction.** Within each (zone, target), the p-values of the variant families are corrected with Benjamini-Hochberg
(the false discovery rate over the grid of variants; statsmodels ``multipletests(method="fdr_bh")``); members of a
family share their family's corrected p. Raw p-values stay beside them in summary.json.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from quantfid.api.variants import PRIMARY_VARIANT

DEFAULT_PRIMARY = PRIMARY_VARIANT  # its one home: quantfid.api.variants

KNOWN_REASONS = (
    (frozenset({"ppl_quant", "ppl_ratio", "ln_ppl_ratio", "ppl_diff"}),
     "monotone transforms of the quant's perplexity (the reference's perplexity is one constant)"),
    (frozenset({"kld_mean", "kld_seqmean"}), "mean of per-window means equals the mean when windows are equal"),
)  # fmt: skip


def _rank_key(values: np.ndarray) -> tuple[tuple, tuple] | None:
    v = np.asarray(values, float)
    if not np.isfinite(v).all():
        return None
    rounded = np.array([float(f"{x:.12g}") for x in v])
    r = stats.rankdata(rounded)
    return tuple(r), tuple(len(r) + 1 - r)


def variant_families(table: pd.DataFrame, variants: list[str], quants: list[str], primary: str | None,
                     order_hint: tuple[str, ...] = ()) -> pd.DataFrame:  # fmt: skip
    """One row per variant: ``family`` (representative's name), ``sign`` (+1, or -1 if reversed), ``n_members``,
    ``reason``. Variants with missing values form families of their own."""
    keys: dict[tuple, list[tuple[str, int]]] = {}
    solo = []
    for v in variants:
        k = _rank_key(table.loc[quants, v].to_numpy(float))
        if k is None or len(set(k[0])) == 1:  # incomplete or constant: nothing to compare ranks with
            solo.append(v)
            continue
        fwd, rev = k
        canon, sign = (fwd, 1) if fwd <= rev else (rev, -1)
        keys.setdefault(canon, []).append((v, sign))
    pri = {name: i for i, name in enumerate(order_hint)}
    rows = []
    for members in keys.values():
        names = [m for m, _ in members]
        rep = primary if primary in names else min(names, key=lambda n: (pri.get(n, len(pri)), n))
        rep_sign = dict(members)[rep]
        reason = "" if len(names) == 1 else _reason(names, len(quants))
        for name, sign in members:
            rows.append({"variant": name, "family": rep, "sign": int(sign * rep_sign), "n_members": len(names),
                         "reason": reason})  # fmt: skip
    for v in solo:
        rows.append({"variant": v, "family": v, "sign": 1, "n_members": 1,
                     "reason": "missing or constant values: not compared"})  # fmt: skip
    return pd.DataFrame(rows).set_index("variant").loc[variants]


def _reason(names: list[str], n_quants: int) -> str:
    stats_ = {n.split("@")[0] for n in names}
    settings = {n.split("@")[1] if "@" in n else "" for n in names}
    for group, why in KNOWN_REASONS:
        if stats_ <= group and len(settings) == 1:
            return f"identical rank vectors over the {n_quants} quants: {why}"
    return (f"identical (or exactly reversed) rank vectors over the {n_quants} quants of this cohort: the same "
            "measurement here, though not identical by construction (another cohort may separate them)")


def families_summary(fam: pd.DataFrame) -> list[dict]:
    """[{family, members, reversed, reason}] for families with more than one member, largest first."""
    out = []
    for rep, g in fam.groupby("family", sort=False):
        if len(g) < 2:
            continue
        out.append({"family": rep, "members": list(g.index), "reversed": [v for v in g.index if g.at[v, "sign"] < 0],
                    "reason": g["reason"].iloc[0]})  # fmt: skip
    return sorted(out, key=lambda d: (-len(d["members"]), d["family"]))


def resolve_primary(variants: list[str], requested: str | None) -> tuple[str, str | None]:
    """(primary variant, note or None). ``requested`` None means the default, with fallbacks; an explicit request
    must exist (the caller raises)."""
    if requested is not None:
        return requested, None
    if DEFAULT_PRIMARY in variants:
        return DEFAULT_PRIMARY, None
    for cand in ("kld_mean", *[v for v in variants if v.split("@")[0] in ("kld_mean", "mean_kld", "kld")]):
        if cand in variants:
            return cand, f"default primary variant {DEFAULT_PRIMARY!r} is not in the cohort; used {cand!r}"
    return variants[0], f"default primary variant {DEFAULT_PRIMARY!r} is not in the cohort; used {variants[0]!r}"


def bh_over_families(corr: pd.DataFrame, fam: pd.DataFrame, p_column: str = "p", out_column: str = "p_bh"
                     ) -> pd.DataFrame:  # fmt: skip
    """Add ``family`` and ``out_column``: BH within each (zone, target) over the families' p-values."""
    corr = corr.copy()
    corr["family"] = corr["variant"].map(fam["family"])
    group = pd.factorize(corr["zone"].astype(str) + "\x00" + corr["target"].astype(str))[0]
    fam_id = pd.factorize(corr["family"])[0]
    p = corr[p_column].to_numpy(float)
    key = group.astype(np.int64) * (fam_id.max() + 1) + fam_id
    _, first = np.unique(key, return_index=True)  # one row per (zone, target, family): its p stands for all
    rep = np.zeros(len(corr), dtype=bool)
    rep[first] = True
    rep &= np.isfinite(p)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0, True])
    adj_of_key: dict[int, float] = {}
    for a, b in itertools.pairwise(bounds):
        rows = order[a:b][rep[order[a:b]]]
        if len(rows):
            adj = multipletests(p[rows], method="fdr_bh")[1]
            adj_of_key.update(zip(key[rows].tolist(), adj.tolist(), strict=True))
    out = np.array([adj_of_key.get(k, np.nan) for k in key.tolist()])
    corr[out_column] = out
    return corr
