"""The 14 fidelity variants of the paper and the four measurement settings they need.

A variant is (statistic, corpus, context), named ``<stat>@<corpus>.<context>`` (docs/schema.md). Eleven come from
one measurement on held-out code at context 256 (six KLD aggregations, four perplexity formulations, top-1
agreement); three vary the calibration corpus (prose, task prompts) and the context length (128) of the mean KLD.
All statistics of one setting come from the same per-token arrays: a setting costs one forward pass per window.
This is the list's one home: the sweep's presets, the analysis (``--variants paper14``) and the docs refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantfid.api.schema import FIDELITY_PREFIX


def setting_name(corpus: str, context: int) -> str:
    """``code.256``: the suffix of a fidelity variant's name, one per (corpus, context) measurement setting."""
    return f"{corpus}.{context}"


def variant_name(stat: str, corpus: str, context: int) -> str:
    """``kld_mean@code.256``: a fidelity statistic at one measurement setting."""
    return f"{stat}@{setting_name(corpus, context)}"


@dataclass(frozen=True)
class Variant:
    stat: str
    corpus: str
    context: int

    @property
    def setting(self) -> str:
        """``<corpus>.<context>``: the measurement setting the variant is read from."""
        return setting_name(self.corpus, self.context)

    @property
    def name(self) -> str:
        return variant_name(self.stat, self.corpus, self.context)

    @property
    def metric(self) -> str:
        """The metric the quant run logs (in the run whose fidelity setting is ``corpus.context``)."""
        return f"{FIDELITY_PREFIX}{self.stat}"


_CODE_STATS = (
    "kld_mean",
    "kld_median",
    "kld_p90",
    "kld_p99",
    "kld_max",
    "kld_seqmean",
    "ppl_quant",
    "ppl_ratio",
    "ln_ppl_ratio",
    "ppl_diff",
    "top1_agree",
)
PAPER_VARIANTS: tuple[Variant, ...] = (
    *(Variant(s, "code", 256) for s in _CODE_STATS),
    Variant("kld_mean", "prose", 256),
    Variant("kld_mean", "tasks", 256),
    Variant("kld_mean", "code", 128),
)
PAPER_VARIANT_NAMES: tuple[str, ...] = tuple(v.name for v in PAPER_VARIANTS)
# The Hydra option names under conf/fidelity/ that together cover every paper variant (a test composes each and checks
# that their (corpus, context) pairs are exactly the variants' settings).
PAPER_SETTINGS: tuple[str, ...] = ("code_256", "code_128", "prose_256", "tasks_256")
#: The variant the analysis ranks by unless told otherwise: the paper's headline number.
PRIMARY_VARIANT = variant_name("kld_mean", "code", 256)
