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


# ---- direction-aware fidelity statistics and their volume-only controls (docs/fidelity.md, issue 15)
#: The pseudo-setting of the statistics computed on the calibration prompts (not on a corpus window): their variant
#: names are ``<stat>@calibration``. They are logged (``fid.<stat>``) on every run of a quant, whatever its fidelity
#: setting; the analysis reads them once per quant.
CALIBRATION_SETTING = "calibration"
#: Label-aware (gold answers of the calibration prompts), signed: positive = toward correct.
DIRECTION_LABEL_AWARE: tuple[str, ...] = (
    "dir_gold_ll_delta",  # mean change in log-likelihood of the gold continuation
    "dir_gold_ll_delta_refpass",  # ... over prompts the reference gets right (teacher-forced)
    "dir_gold_ll_delta_reffail",  # ... over prompts it gets wrong
    "dir_margin_delta",  # mean change in the gold-vs-best-distractor margin
    "dir_margin_delta_refpass",
    "dir_margin_delta_reffail",
    "dir_tf_netflip",  # (teacher-forced gains - losses) / prompts: the margin changing sign
)
#: Label-free (the reference's own continuation and confidence), signed like the above.
DIRECTION_LABEL_FREE: tuple[str, ...] = (
    "dir_expected_netflip",  # mean over prompts of displacement x (1 - 2 x reference confidence)
    "dir_confident_disagree",  # share of prompts where the quant overturns a confident reference token (loss-ward)
)
#: Behavioural (greedy outputs of the quant on the calibration prompts, scored), opt-in: ``direction.behavioural``.
DIRECTION_BEHAVIOURAL: tuple[str, ...] = ("beh_net_rate", "beh_loss_rate", "beh_gain_rate")
#: Their exact (Clopper-Pearson) bounds and counts, logged beside them (not variants of their own).
BEHAVIOURAL_DETAILS: tuple[str, ...] = (
    "beh_loss_rate_lo", "beh_loss_rate_hi", "beh_gain_rate_lo", "beh_gain_rate_hi",
    "beh_lost", "beh_gained", "beh_n_refpass", "beh_n_reffail",
)  # fmt: skip
#: Controls that should track volume only: KL and Jensen-Shannon on the reference's own continuation, top-k overlap.
VOLUME_CONTROLS: tuple[str, ...] = ("ctl_kld_refcont", "ctl_js_refcont", "ctl_topk_overlap")
#: Bookkeeping of the calibration measurement.
CALIBRATION_DETAILS: tuple[str, ...] = ("cal_n_prompts", "cal_ref_tf_acc")
#: Every statistic logged from the calibration prompts (each ``fid.<stat>``).
CALIBRATION_STATS: tuple[str, ...] = (
    *DIRECTION_LABEL_AWARE, *DIRECTION_LABEL_FREE, *DIRECTION_BEHAVIOURAL, *BEHAVIOURAL_DETAILS, *VOLUME_CONTROLS,
    *CALIBRATION_DETAILS,
)  # fmt: skip
#: The metrics the pre-registered comparison (docs/analysis.md, "Direction-aware metrics against KLD") tests
#: against the primary KLD variant, Holm-corrected together; the controls are reported beside them, uncorrected.
PREREGISTERED_DIRECTION: tuple[str, ...] = (
    "dir_gold_ll_delta", "dir_margin_delta", "dir_tf_netflip", "dir_expected_netflip", "dir_confident_disagree",
    "beh_net_rate",
)  # fmt: skip


def calibration_variant_name(stat: str) -> str:
    """``dir_tf_netflip@calibration``: a statistic of the calibration prompts, one per quant."""
    return f"{stat}@{CALIBRATION_SETTING}"


PREREGISTERED_DIRECTION_VARIANTS: tuple[str, ...] = tuple(map(calibration_variant_name, PREREGISTERED_DIRECTION))
VOLUME_CONTROL_VARIANTS: tuple[str, ...] = tuple(map(calibration_variant_name, VOLUME_CONTROLS))
