"""Direction-aware metrics and volume controls against an independent float64 numpy implementation, and their sign
convention on constructed quants that only fix (or only break) answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from quantfid.fidelity.direction import (
    CalibrationItem,
    TokenItem,
    aggregate_direction,
    behavioural_metrics,
    measure_direction,
    per_prompt,
    tokenize_items,
)
from quantfid.fidelity.measure import per_prompt_fidelity
from quantfid.fidelity.settings import FidelityError

ITEMS = [
    CalibrationItem("12+7=", "19", "19", stop="\n"),
    CalibrationItem("reverse a b c =", " c b a", " c a b", stop="\n"),
    CalibrationItem(">>> max([3, 1, 4])\n", "4", "3", stop="\n"),
    CalibrationItem("def f(x):\n    return", " x + 3", "", stop="\n"),
    CalibrationItem("largest of 301, 355, 312, 340 is", " 355", " 340", (" 301", " 355", " 312", " 340"), 1),
    CalibrationItem("next in 2, 4, 6, 8 of 10 11 9 is", " 10", " 10", (" 10", " 11", " 9"), 0),
]


def _np_lp(model, ids) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)])).logits[0].double().numpy()
    return logits - logsumexp(logits, axis=-1, keepdims=True)


def _np_kl(p_log, q_log):
    return (np.exp(p_log) * (p_log - q_log)).sum(-1)


def numpy_direction(ref, quant, items: list[TokenItem], confident=0.5, topk=5) -> dict[str, float]:
    """Straight loops over prompts and positions, float64 numpy, one unpadded sequence at a time."""
    rows = []
    for it in items:
        n_p = len(it.prompt)

        stop = list(it.stop_ids)
        more = 1 if stop else 0  # generation: one more position, whose outcome is "any stop token"

        def cont_rows(model, cont, n_p=n_p, it=it, more=more):
            return _np_lp(model, it.prompt + cont)[n_p - 1 : n_p - 1 + len(cont) + more]

        def seq_ll(lp, cont, stop=stop):
            v = sum(lp[t, tok] for t, tok in enumerate(cont))
            return v + (logsumexp(lp[len(cont), stop]) if stop else 0.0)

        lls = {}
        margins = {}
        for name, model in (("r", ref), ("q", quant)):
            per_choice = []
            for g in it.gold:
                per_choice.append(seq_ll(cont_rows(model, g), g))
            lls[name] = per_choice
            if it.is_choice:
                others = [v for m, v in enumerate(per_choice) if m != it.gold_index]
                margins[name] = per_choice[it.gold_index] - max(others)
            else:
                lp = cont_rows(model, it.gold[0])
                ms = []
                for t, tok in enumerate(it.gold[0]):
                    other = np.delete(lp[t], tok).max()
                    ms.append(lp[t, tok] - other)
                if stop:
                    last = lp[len(it.gold[0])]
                    ms.append(logsumexp(last[stop]) - np.delete(last, stop).max())
                margins[name] = min(ms)
        lp, lq = cont_rows(ref, it.refcont), cont_rows(quant, it.refcont)
        kl = _np_kl(lp, lq)
        m_log = np.log(0.5 * (np.exp(lp) + np.exp(lq)))
        js = 0.5 * _np_kl(lp, m_log) + 0.5 * _np_kl(lq, m_log)
        overlap = [len(set(np.argsort(-lp[t])[:topk]) & set(np.argsort(-lq[t])[:topk])) / topk for t in range(len(lp))]
        if it.is_choice:
            soft = np.exp(np.array(lls["r"]) - logsumexp(lls["r"]))
            pr, pq = int(np.argmax(lls["r"])), int(np.argmax(lls["q"]))
            conf = soft[pr]
            dis = pq != pr and conf >= confident
        else:
            conf = math.exp(seq_ll(lp, it.refcont))
            dis = any(lq[t].argmax() != lp[t].argmax() and np.exp(lp[t].max()) >= confident for t in range(len(lp)))
        rows.append(
            dict(
                llr=lls["r"][it.gold_index], llq=lls["q"][it.gold_index], mr=margins["r"], mq=margins["q"],
                d=kl.mean(), c=conf, dis=dis, js=js.mean(), tk=np.mean(overlap),
            )
        )  # fmt: skip
    r = {k: np.array([row[k] for row in rows], dtype=float) for k in rows[0]}
    right = r["mr"] > 0
    dll, dm = r["llq"] - r["llr"], r["mq"] - r["mr"]
    nan_mean = lambda x: float(x.mean()) if x.size else math.nan  # noqa: E731
    q_right = r["mq"] > 0
    return {
        "fid.dir_gold_ll_delta": dll.mean(),
        "fid.dir_gold_ll_delta_refpass": nan_mean(dll[right]),
        "fid.dir_gold_ll_delta_reffail": nan_mean(dll[~right]),
        "fid.dir_margin_delta": dm.mean(),
        "fid.dir_margin_delta_refpass": nan_mean(dm[right]),
        "fid.dir_margin_delta_reffail": nan_mean(dm[~right]),
        "fid.dir_tf_netflip": ((~right & q_right).sum() - (right & ~q_right).sum()) / len(rows),
        "fid.dir_expected_netflip": (r["d"] * (1 - 2 * r["c"])).mean(),
        "fid.dir_confident_disagree": r["dis"].mean(),
        "fid.ctl_kld_refcont": r["d"].mean(),
        "fid.ctl_js_refcont": r["js"].mean(),
        "fid.ctl_topk_overlap": r["tk"].mean(),
        "fid.cal_n_prompts": float(len(rows)),
        "fid.cal_ref_tf_acc": right.mean(),
    }


@pytest.mark.parametrize("scale", [0.05, 0.4])
def test_direction_metrics_match_numpy_float64(reference, perturbed, scale):
    quant = perturbed(reference.model, scale=scale)
    metrics, _ = measure_direction(reference.model, quant, reference.tokenizer, ITEMS, batch_size=4, progress=False)
    expected = numpy_direction(reference.model, quant, tokenize_items(ITEMS, reference.tokenizer))
    assert set(metrics) == set(expected)
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(metrics[k]), k
        else:
            assert metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert metrics["fid.ctl_kld_refcont"] > 0


def test_stop_set_is_eos_and_tokens_starting_with_the_stop_string(reference):
    tok = reference.tokenizer
    items = tokenize_items(ITEMS, tok)
    ids = items[0].stop_ids
    assert tok.eos_token_id in ids and tok("\n", add_special_tokens=False)["input_ids"][-1] in ids
    assert all(i == tok.eos_token_id or tok.decode([i]).startswith("\n") for i in ids)
    assert items[4].stop_ids == () and items[4].is_choice


def test_identical_model_has_no_displacement_and_no_direction(reference):
    metrics, _ = measure_direction(reference.model, reference.model, reference.tokenizer, ITEMS, progress=False)
    for k in ("dir_gold_ll_delta", "dir_margin_delta", "dir_tf_netflip", "dir_expected_netflip", "ctl_kld_refcont"):
        assert metrics[f"fid.{k}"] == 0.0, k
    assert metrics["fid.dir_confident_disagree"] == 0.0 and metrics["fid.ctl_topk_overlap"] == 1.0


class Bigram(torch.nn.Module):
    """A causal LM whose next-token logits depend on the last token only: logits[b, t] = W[ids[b, t]]."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.w[input_ids]})()


STOP = 1


def _constructed(n_right=6, n_wrong=6, vocab=40):
    """A reference right (confidently) on some prompts and wrong (unsure) on others; a quant that fixes only the wrong
    ones, and one that breaks only the right ones. Prompt i ends in its own context token; gold answer g_i."""
    w = torch.zeros(vocab, vocab)
    items, right = [], []
    for i in range(n_right + n_wrong):
        ctx, gold, wrong = 2 + i, 2 + n_right + n_wrong + i % 10, 2 + n_right + n_wrong + (i + 1) % 10
        w[gold, STOP] = 8.0  # after any answer token, the stop token
        ok = i < n_right
        if ok:
            w[ctx, gold] = 6.0
        else:  # wrong, unsure: the wrong token only slightly ahead of the gold one
            w[ctx, wrong], w[ctx, gold] = 2.0, 1.5
        items.append(TokenItem((0, ctx), ((gold, STOP),), 0, ((gold if ok else wrong), STOP), False))
        right.append(ok)
    fix, brk = w.clone(), w.clone()
    for i, it in enumerate(items):
        ctx, gold = it.prompt[1], it.gold[0][0]
        if right[i]:
            brk[ctx, gold] = 0.0
            brk[ctx, it.gold[0][0] + 1 if gold + 1 < vocab else 2] = 7.0
        else:
            fix[ctx, gold] = 4.0
    return Bigram(w), Bigram(fix), Bigram(brk), items, np.array(right)


def test_a_quant_that_only_fixes_answers_scores_positive_and_one_that_only_breaks_negative():
    ref, fixer, breaker, items, right = _constructed()
    fixed = aggregate_direction(per_prompt(ref, fixer, items, progress=False))
    broken = aggregate_direction(per_prompt(ref, breaker, items, progress=False))
    assert fixed["fid.cal_ref_tf_acc"] == pytest.approx(right.mean())
    for k in ("dir_gold_ll_delta", "dir_margin_delta", "dir_tf_netflip", "dir_expected_netflip"):
        assert fixed[f"fid.{k}"] > 0, k
        assert broken[f"fid.{k}"] < 0, k
    assert fixed["fid.dir_tf_netflip"] == pytest.approx((~right).mean())
    assert fixed["fid.dir_confident_disagree"] == 0.0 and broken["fid.dir_confident_disagree"] > 0
    # the volume controls see both as displacement, with no sign
    assert fixed["fid.ctl_kld_refcont"] > 0 and broken["fid.ctl_kld_refcont"] > 0
    # the behavioural metric on the same constructed outcomes
    b_fix = behavioural_metrics(right, np.ones_like(right))
    b_brk = behavioural_metrics(right, np.zeros_like(right))
    assert b_fix["fid.beh_net_rate"] > 0 and b_fix["fid.beh_loss_rate"] == 0 and b_fix["fid.beh_gain_rate"] == 1
    assert b_brk["fid.beh_net_rate"] < 0 and b_brk["fid.beh_loss_rate"] == 1 and b_brk["fid.beh_gain_rate"] == 0


@pytest.mark.parametrize(("lost", "n_pass", "gained", "n_fail"), [(0, 30, 3, 10), (7, 40, 0, 5), (5, 5, 2, 9)])
def test_behavioural_rates_and_clopper_pearson_against_beta_quantiles(lost, n_pass, gained, n_fail):
    ref = np.array([True] * n_pass + [False] * n_fail)
    quant = np.array([False] * lost + [True] * (n_pass - lost) + [True] * gained + [False] * (n_fail - gained))
    m = behavioural_metrics(ref, quant)

    def cp(k, n, a=0.05):
        lo = 0.0 if k == 0 else stats.beta.ppf(a / 2, k, n - k + 1)
        hi = 1.0 if k == n else stats.beta.ppf(1 - a / 2, k + 1, n - k)
        return lo, hi

    assert m["fid.beh_loss_rate"] == pytest.approx(lost / n_pass)
    assert m["fid.beh_gain_rate"] == pytest.approx(gained / n_fail)
    assert m["fid.beh_net_rate"] == pytest.approx((gained - lost) / (n_pass + n_fail))
    assert (m["fid.beh_loss_rate_lo"], m["fid.beh_loss_rate_hi"]) == pytest.approx(cp(lost, n_pass), abs=1e-9)
    assert (m["fid.beh_gain_rate_lo"], m["fid.beh_gain_rate_hi"]) == pytest.approx(cp(gained, n_fail), abs=1e-9)


def test_bad_input_is_a_clear_error(reference):
    with pytest.raises(FidelityError, match="at least one calibration prompt"):
        tokenize_items([], reference.tokenizer)
    with pytest.raises(FidelityError, match="answer_index"):
        tokenize_items([CalibrationItem("x", " a", " a", (" a", " b"), 5)], reference.tokenizer)
    with pytest.raises(FidelityError, match="equal, non-empty"):
        behavioural_metrics([True], [True, False])
    with pytest.raises(FidelityError, match="confident"):
        per_prompt(reference.model, reference.model, tokenize_items(ITEMS, reference.tokenizer), confident=1.5)


def test_per_prompt_labelfree_columns_match_numpy(reference, perturbed):
    quant = perturbed(reference.model, scale=0.3)
    tok = reference.tokenizer
    prompts = [it.prompt for it in ITEMS]
    completions = [it.reference_output for it in ITEMS]
    got = per_prompt_fidelity(reference.model, quant, tok, prompts, completions, batch_size=4, confident=0.5)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        c_ids = tok(c, add_special_tokens=False)["input_ids"]
        if not c_ids:
            assert np.isnan(got["dir_expected_netflip"][i]) and np.isnan(got["ctl_js_refcont"][i])
            continue
        p_ids = tok(p)["input_ids"]
        rows = slice(len(p_ids) - 1, len(p_ids) - 1 + len(c_ids))
        lp, lq = _np_lp(reference.model, p_ids + c_ids)[rows], _np_lp(quant, p_ids + c_ids)[rows]
        kl = _np_kl(lp, lq)
        conf = math.exp(sum(lp[t, tok_] for t, tok_ in enumerate(c_ids)))
        m_log = np.log(0.5 * (np.exp(lp) + np.exp(lq)))
        js = (0.5 * _np_kl(lp, m_log) + 0.5 * _np_kl(lq, m_log)).mean()
        dis = any(lq[t].argmax() != lp[t].argmax() and np.exp(lp[t].max()) >= 0.5 for t in range(len(lp)))
        assert got["kld_completion"][i] == pytest.approx(kl.mean(), rel=1e-4, abs=1e-7)
        assert got["dir_expected_netflip"][i] == pytest.approx(kl.mean() * (1 - 2 * conf), rel=1e-4, abs=1e-7)
        assert got["ctl_js_refcont"][i] == pytest.approx(js, rel=1e-4, abs=1e-7)
        assert got["dir_confident_disagree"][i] == float(dis)
