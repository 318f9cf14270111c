"""The 14 fidelity variants of the paper and the four measurement settings they need.

A variant is (statistic, corpus, context), named ``<stat>@<corpus>.<context>`` (docs/schema.md). Eleven come from
one measurement on held-out code at context 256 (six KLD aggregations, four perplexity formulations, top-1
agreement); three vary the calibration corpus (prose, task prompts) and the context length (128) of the mean KLD.
All statistics of one setting come from the same per-token arrays: a setting costs one forward pass per window.
``conf/fidelity/variants/paper14.yaml`` mirrors this list (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    stat: str
    corpus: str
    context: int

    @property
    def name(self) -> str:
        return f"{self.stat}@{self.corpus}.{self.context}"

    @property
    def metric(self) -> str:
        """The metric the quant run logs (in the run whose fidelity setting is ``corpus.context``)."""
        return f"fid.{self.stat}"


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
# The Hydra option names under conf/fidelity/ that together cover every paper variant.
PAPER_SETTINGS: tuple[str, ...] = ("code_256", "code_128", "prose_256", "tasks_256")
