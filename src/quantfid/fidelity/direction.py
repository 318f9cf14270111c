"""Direction-aware fidelity metrics on the calibration prompts, and the volume-only controls beside them.

KLD measures how much a quant's next-token distributions move away from the reference's (volume), not whether the
moves break answers or fix them (direction). These statistics try to see direction cheaply, from teacher-forced
forward passes of the reference and the quant over the calibration prompts (never the evaluation prompts): per
prompt, one pass on ``prompt + gold continuation`` (one per choice for choice prompts) and one on ``prompt + the
reference's own continuation``. Formulas, signs and costs: docs/fidelity.md. Names: quantfid.api.variants.

Per prompt (``m`` = reference or quant; log-probs from :func:`quantfid.api.divergence.log_probs`, float64):

- ``ll_m``: log-likelihood of the gold continuation (generation: the answer's tokens, then the *stop set*, i.e. EOS
  or any token whose text starts with the task's stop string, as one outcome; choice: the right choice);
- ``margin_m``: gold-vs-best-distractor margin: generation, the smallest over the gold positions of
  ``log p(gold token) - max log p(any other token)`` (at the last position: ``log p(stop set) - max log p(a token
  outside it)``), > 0 exactly when greedy decoding produces the gold answer and stops;
  choice, ``ll(right choice) - max ll(other choices)``. The reference is *right* (teacher-forced) when
  ``margin_ref > 0``;
- ``d``: mean token KL(ref || quant) over the positions of the reference's own continuation; ``c``: the reference's
  confidence in that continuation (generation: its probability; choice: the softmax over the choices' ll);
- confident disagreement: at some continuation position the quant's argmax differs from the reference's while the
  reference's top probability is at least ``confident`` (choice: the quant picks another choice while ``c >=
  confident``).

Signed statistics are positive toward correct answers.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from quantfid.api.divergence import kl_divergence, log_probs
from quantfid.api.schema import FIDELITY_PREFIX
from quantfid.fidelity.cache import bad_logits, pad_id
from quantfid.fidelity.settings import FidelityError


@dataclass(frozen=True)
class CalibrationItem:
    """One calibration prompt as text: its gold answer (or choices), the stop string generation ends with, and the
    reference's own output on it (its greedy generation, or the choice it picks)."""

    prompt: str
    answer: str
    reference_output: str
    choices: tuple[str, ...] = ()
    answer_index: int = -1
    stop: str = ""


@dataclass(frozen=True)
class TokenItem:
    """A calibration prompt as token ids: ``gold`` holds one continuation (generation) or one per choice. With
    ``stop_ids`` (generation) every continuation is followed by one more position whose outcome is "a stop token"."""

    prompt: tuple[int, ...]
    gold: tuple[tuple[int, ...], ...]
    gold_index: int
    refcont: tuple[int, ...]
    is_choice: bool
    stop_ids: tuple[int, ...] = ()


@dataclass
class PerPrompt:
    """Per-prompt quantities of one (reference, quant) pair, float64 arrays of one value per calibration prompt."""

    ll_ref: np.ndarray
    ll_quant: np.ndarray
    margin_ref: np.ndarray
    margin_quant: np.ndarray
    displacement: np.ndarray  # mean KL(ref || quant) over the reference's continuation
    confidence: np.ndarray  # the reference's confidence in its continuation
    confident_disagree: np.ndarray  # bool
    js: np.ndarray  # mean Jensen-Shannon divergence over the reference's continuation
    topk_overlap: np.ndarray  # mean |top-k ref & top-k quant| / k over the reference's continuation


def tokenize_items(items: Sequence[CalibrationItem], tokenizer: PreTrainedTokenizerBase) -> list[TokenItem]:
    """Token ids as the benchmark feeds them: the prompt with the tokenizer's special tokens, continuations without."""
    if not items:
        raise FidelityError("direction metrics need at least one calibration prompt; got none")
    prompts = tokenizer([it.prompt for it in items])["input_ids"]
    stops: dict[str, tuple[int, ...]] = {}

    def enc(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    out = []
    for it, p in zip(items, prompts, strict=True):
        if it.choices:
            if not 0 <= it.answer_index < len(it.choices):
                raise FidelityError(f"calibration prompt {it.prompt[:40]!r}: answer_index {it.answer_index} invalid")
            gold = tuple(enc(c) for c in it.choices)
            refcont = enc(it.reference_output)
            index = it.answer_index
        else:
            gold = (enc(it.answer),)
            refcont = enc(it.reference_output)
            index = 0
        if it.stop and not it.choices and it.stop not in stops:
            stops[it.stop] = stop_ids(tokenizer, it.stop)
        sid = stops.get(it.stop, ()) if not it.choices else ()
        if not sid and (any(len(g) == 0 for g in gold) or not refcont):
            raise FidelityError(f"calibration prompt {it.prompt[:40]!r}: empty gold or reference continuation")
        out.append(TokenItem(tuple(p), gold, index, refcont, bool(it.choices), sid))
    return out


def stop_ids(tokenizer: PreTrainedTokenizerBase, stop: str) -> tuple[int, ...]:
    """Token ids that end a greedy generation right there: EOS and every token whose text starts with ``stop``."""
    ids = {i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith(stop)}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


@torch.no_grad()
def _rows(
    model: torch.nn.Module, seqs: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], pad: int, extra: Sequence[bool]
) -> list[torch.Tensor]:
    """Per (prompt, continuation): float64 log-prob rows at the positions that predict the continuation's tokens,
    and (``extra``) the next position, after the continuation."""
    device = next(model.parameters()).device
    full = [p + c for p, c in seqs]
    width = max(map(len, full))
    ids = torch.full((len(full), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(full):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    out = []
    for row, ((p, c), more) in enumerate(zip(seqs, extra, strict=True)):
        rows = logits[row, len(p) - 1 : len(p) - 1 + len(c) + int(more)]
        if bad_logits(rows):
            raise FidelityError("NaN/inf logits on a calibration prompt: the model is numerically broken")
        out.append(log_probs(rows).cpu())
    return out


def _margin_tokens(lp: torch.Tensor, target: tuple[int, ...], stops: tuple[int, ...]) -> float:
    """min over positions of log p(target) - max log p(other token); the stop position (last row, with ``stops``):
    log p(stop set) - max log p(token outside it)."""
    margins = []
    if target:
        t = torch.tensor(target, dtype=torch.long)
        rows = lp[: len(target)]
        gold = rows.gather(-1, t[:, None])[:, 0]
        margins.append(gold - rows.scatter(-1, t[:, None], float("-inf")).amax(-1))
    if stops:
        s = torch.tensor(stops, dtype=torch.long)
        last = lp[len(target)]
        margins.append((torch.logsumexp(last[s], 0) - last.index_fill(0, s, float("-inf")).max())[None])
    return float(torch.cat(margins).min())


def _ll(lp: torch.Tensor, target: tuple[int, ...], stops: tuple[int, ...] = ()) -> float:
    """Log-likelihood of ``target`` (and of then stopping, with ``stops``) from its rows ``lp``."""
    out = float(lp[: len(target)].gather(-1, torch.tensor(target, dtype=torch.long)[:, None]).sum()) if target else 0.0
    if stops:
        out += float(torch.logsumexp(lp[len(target)][torch.tensor(stops, dtype=torch.long)], 0))
    return out


def _js(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * kl_divergence(lp, lm) + 0.5 * kl_divergence(lq, lm)


#: Reference log-prob rows kept between quants (the reference is the same for every quant of a sweep), per reference
#: module, up to this many bytes (float32: the rows are float64 values rounded through float32, so nothing is lost).
REFERENCE_ROWS_BUDGET = 1 << 30
_REF_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

Key = tuple[tuple[int, ...], tuple[int, ...], bool]


def _all_rows(
    model: torch.nn.Module, keys: Sequence[Key], pad: int, batch_size: int, progress: bool, desc: str
) -> dict[Key, torch.Tensor]:
    """Rows of every distinct (prompt, continuation, stop row) sequence, batched by length (little padding)."""
    uniq = sorted(set(keys), key=lambda k: len(k[0]) + len(k[1]))
    out: dict[Key, torch.Tensor] = {}
    for start in tqdm(range(0, len(uniq), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        b = uniq[start : start + batch_size]
        out.update(zip(b, _rows(model, [(p, c) for p, c, _ in b], pad, [m for *_, m in b]), strict=True))
    return out


def _reference_rows(
    reference: torch.nn.Module, keys: Sequence[Key], pad: int, batch_size: int, progress: bool
) -> dict[Key, torch.Tensor]:
    """The reference's rows, computed once per reference and sequence (within :data:`REFERENCE_ROWS_BUDGET`)."""
    try:
        store = _REF_ROWS.setdefault(reference, {})
    except TypeError:  # not weak-referenceable: no reuse
        store = {}
    missing = [k for k in set(keys) if k not in store]
    fresh = _all_rows(reference, missing, pad, batch_size, progress, "direction (reference)") if missing else {}
    used = sum(v.numel() * 4 for v in store.values())
    for k, v in fresh.items():
        if used + v.numel() * 4 <= REFERENCE_ROWS_BUDGET:
            store[k] = v.float()
            used += v.numel() * 4
    return {k: (fresh[k] if k in fresh else store[k].double()) for k in set(keys)}


def per_prompt(
    reference: torch.nn.Module,
    model: torch.nn.Module,
    items: Sequence[TokenItem],
    *,
    pad: int = 0,
    confident: float = 0.5,
    topk: int = 5,
    batch_size: int = 32,
    progress: bool = True,
) -> PerPrompt:
    """The per-prompt quantities of ``model`` against ``reference`` on tokenised calibration prompts.

    Every distinct sequence is run once per model (a reference that is right on a prompt has gold = its own
    continuation), batched by length; the reference's rows are reused across quants."""
    if not 0.0 < confident < 1.0:
        raise FidelityError(f"direction.confident={confident!r} must be in (0, 1)")
    n = len(items)
    cols = {k: np.empty(n) for k in ("llr", "llq", "mr", "mq", "d", "c", "js", "tk")}
    dis = np.zeros(n, dtype=bool)
    gold_keys = [[(it.prompt, g, bool(it.stop_ids)) for g in it.gold] for it in items]
    cont_keys = [(it.prompt, it.refcont, bool(it.stop_ids)) for it in items]
    keys = [*cont_keys, *(k for ks in gold_keys for k in ks)]
    rows_r = _reference_rows(reference, keys, pad, batch_size, progress)
    rows_q = rows_r if model is reference else _all_rows(model, keys, pad, batch_size, progress, "direction")
    for i, it in enumerate(items):
        lp, lq = rows_r[cont_keys[i]], rows_q[cont_keys[i]]
        g_ref = [rows_r[k] for k in gold_keys[i]]
        g_q = [rows_q[k] for k in gold_keys[i]]
        kl = kl_divergence(lp, lq)
        cols["d"][i] = float(kl.mean())
        cols["js"][i] = float(_js(lp, lq).mean())
        kk = min(topk, lp.shape[-1])
        top_p, top_q = lp.topk(kk, -1).indices, lq.topk(kk, -1).indices
        cols["tk"][i] = float((top_p[:, :, None] == top_q[:, None, :]).any(-1).double().mean(-1).mean())
        if not it.gold:  # label-free only (evaluation prompts): the reference's own continuation
            cols["llr"][i] = cols["llq"][i] = cols["mr"][i] = cols["mq"][i] = math.nan
            cols["c"][i] = math.exp(_ll(lp, it.refcont, it.stop_ids))
            top_prob, arg_p = lp.max(-1)
            dis[i] = bool(((lq.argmax(-1) != arg_p) & (top_prob.exp() >= confident)).any())
            continue
        lls_r = [_ll(g_ref[m], g, it.stop_ids) for m, g in enumerate(it.gold)]
        lls_q = [_ll(g_q[m], g, it.stop_ids) for m, g in enumerate(it.gold)]
        gi = it.gold_index
        cols["llr"][i], cols["llq"][i] = lls_r[gi], lls_q[gi]
        if it.is_choice:
            others_r = [v for m, v in enumerate(lls_r) if m != gi]
            others_q = [v for m, v in enumerate(lls_q) if m != gi]
            cols["mr"][i] = lls_r[gi] - max(others_r) if others_r else math.inf
            cols["mq"][i] = lls_q[gi] - max(others_q) if others_q else math.inf
            soft = torch.softmax(torch.tensor(lls_r, dtype=torch.float64), 0)
            pick_r, pick_q = int(np.argmax(lls_r)), int(np.argmax(lls_q))
            cols["c"][i] = float(soft[pick_r])
            dis[i] = pick_q != pick_r and cols["c"][i] >= confident
        else:
            cols["mr"][i] = _margin_tokens(g_ref[0], it.gold[0], it.stop_ids)
            cols["mq"][i] = _margin_tokens(g_q[0], it.gold[0], it.stop_ids)
            cols["c"][i] = math.exp(_ll(lp, it.refcont, it.stop_ids))
            top_prob, arg_p = lp.max(-1)
            dis[i] = bool(((lq.argmax(-1) != arg_p) & (top_prob.exp() >= confident)).any())
    return PerPrompt(
        cols["llr"], cols["llq"], cols["mr"], cols["mq"], cols["d"], cols["c"], dis, cols["js"], cols["tk"]
    )


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def aggregate_direction(pp: PerPrompt) -> dict[str, float]:
    """``fid.*`` direction statistics and volume controls from the per-prompt quantities (names: api.variants)."""
    ref_right = pp.margin_ref > 0
    quant_right = pp.margin_quant > 0
    dll = pp.ll_quant - pp.ll_ref
    dmargin = np.clip(pp.margin_quant, -1e6, 1e6) - np.clip(pp.margin_ref, -1e6, 1e6)
    n = len(dll)
    m = {
        "dir_gold_ll_delta": _mean(dll),
        "dir_gold_ll_delta_refpass": _mean(dll[ref_right]),
        "dir_gold_ll_delta_reffail": _mean(dll[~ref_right]),
        "dir_margin_delta": _mean(dmargin),
        "dir_margin_delta_refpass": _mean(dmargin[ref_right]),
        "dir_margin_delta_reffail": _mean(dmargin[~ref_right]),
        "dir_tf_netflip": float((~ref_right & quant_right).sum() - (ref_right & ~quant_right).sum()) / n,
        "dir_expected_netflip": _mean(pp.displacement * (1.0 - 2.0 * pp.confidence)),
        "dir_confident_disagree": _mean(pp.confident_disagree.astype(np.float64)),
        "ctl_kld_refcont": _mean(pp.displacement),
        "ctl_js_refcont": _mean(pp.js),
        "ctl_topk_overlap": _mean(pp.topk_overlap),
        "cal_n_prompts": float(n),
        "cal_ref_tf_acc": _mean(ref_right.astype(np.float64)),
    }
    return {f"{FIDELITY_PREFIX}{k}": v for k, v in m.items()}


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval of a binomial proportion k/n (NaN, NaN when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(1.0 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def behavioural_metrics(ref_passed: Sequence[bool], quant_passed: Sequence[bool]) -> dict[str, float]:
    """Loss rate (lost / reference-passed) and gain rate (gained / reference-failed) of the quant's greedy outputs on
    the calibration prompts, with exact Clopper-Pearson 95% bounds, and net rate (gained - lost) / prompts."""
    r, q = np.asarray(ref_passed, dtype=bool), np.asarray(quant_passed, dtype=bool)
    if r.shape != q.shape or r.size == 0:
        raise FidelityError(f"behavioural metrics need equal, non-empty outcome lists; got {r.size} and {q.size}")
    lost, gained = int((r & ~q).sum()), int((~r & q).sum())
    n_pass, n_fail = int(r.sum()), int((~r).sum())
    loss_lo, loss_hi = clopper_pearson(lost, n_pass)
    gain_lo, gain_hi = clopper_pearson(gained, n_fail)
    m = {
        "beh_net_rate": (gained - lost) / r.size,
        "beh_loss_rate": lost / n_pass if n_pass else math.nan,
        "beh_gain_rate": gained / n_fail if n_fail else math.nan,
        "beh_loss_rate_lo": loss_lo,
        "beh_loss_rate_hi": loss_hi,
        "beh_gain_rate_lo": gain_lo,
        "beh_gain_rate_hi": gain_hi,
        "beh_lost": float(lost),
        "beh_gained": float(gained),
        "beh_n_refpass": float(n_pass),
        "beh_n_reffail": float(n_fail),
    }
    return {f"{FIDELITY_PREFIX}{k}": float(v) for k, v in m.items()}


def measure_direction(
    reference: torch.nn.Module,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[CalibrationItem],
    *,
    confident: float = 0.5,
    topk: int = 5,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[dict[str, float], PerPrompt]:
    """The direction statistics and volume controls of ``model`` against ``reference`` (``fid.*``), and the
    per-prompt quantities they come from."""
    tok_items = tokenize_items(items, tokenizer)
    pp = per_prompt(
        reference,
        model,
        tok_items,
        pad=pad_id(tokenizer),
        confident=confident,
        topk=topk,
        batch_size=batch_size,
        progress=progress,
    )
    return aggregate_direction(pp), pp


def labelfree_from_rows(
    lp: torch.Tensor, lq: torch.Tensor, cont: Sequence[int], confident: float = 0.5
) -> tuple[float, float, float]:
    """Per-prompt label-free columns from the reference's and the quant's log-prob rows at the positions that predict
    the reference's own completion ``cont``: (expected net flip = mean KL x (1 - 2 x p_ref(completion)), confident
    disagreement 1.0/0.0, mean Jensen-Shannon). Used on the evaluation prompts (api.schema.DIRECTION_COLUMNS)."""
    kl = kl_divergence(lp, lq)
    conf = math.exp(float(lp.gather(-1, torch.tensor(list(cont), dtype=torch.long)[:, None]).sum()))
    top_prob, arg_p = lp.max(-1)
    dis = bool(((lq.argmax(-1) != arg_p) & (top_prob.exp() >= confident)).any())
    return float(kl.mean()) * (1.0 - 2.0 * conf), float(dis), float(_js(lp, lq).mean())
