"""Each metric against an independent computation on a hand-made case."""

import math
import random
import statistics

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp, mannwhitneyu

from raysweep.evaluation.muse import knowmem_prompt, min_k_scores, privleak, truncate_at_stops
from raysweep.evaluation.rouge import rouge_l
from raysweep.evaluation.stats import auc, harmonic_mean
from raysweep.evaluation.tofu import (
    forget_quality,
    forget_truth_ratio_score,
    model_utility,
    truth_ratio,
    utility_truth_ratio_score,
)

WORDS = "the author was born in Santiago Chile writing novels written writes running ran runs 1958 crime-fiction".split()


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("stem", [True, False])
def test_rouge_l_matches_rouge_score(seed, stem):
    from rouge_score import rouge_scorer

    rng = random.Random(seed)
    ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) + rng.choice([".", "!", ""])
    pred = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 15)))
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem).score(ref, pred)["rougeL"]
    ours = rouge_l(ref, pred, stem=stem)
    assert ours["recall"] == pytest.approx(expected.recall)
    assert ours["precision"] == pytest.approx(expected.precision)
    assert ours["f1"] == pytest.approx(expected.fmeasure)


@pytest.mark.parametrize("seed", range(10))
def test_forget_quality_is_the_ks_pvalue_and_invariant_to_inversion(seed):
    rng = np.random.default_rng(seed)
    a, b = np.exp(rng.normal(0, 1, 40)), np.exp(rng.normal(0.3 * seed / 10, 1, 40))
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert forget_quality(1 / a, 1 / b) == pytest.approx(forget_quality(a, b))
    assert forget_quality(a, a) == pytest.approx(1.0)  # the retain reference against itself


def test_harmonic_mean_and_model_utility():
    vals = [0.2, 0.5, 0.9, 0.4, 0.7, 0.33, 0.81, 0.6, 0.15]
    assert harmonic_mean(vals) == pytest.approx(statistics.harmonic_mean(vals))
    numbers = {f"{s}_{m}": v for (s, m), v in zip(
        [(s, m) for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rougeL_recall", "truth_ratio")], vals)}
    numbers["forget_prob"] = 0.0  # forget numbers are excluded from utility
    assert model_utility(numbers) == pytest.approx(statistics.harmonic_mean(vals))
    assert harmonic_mean([0.5, 0.0]) == 0.0


def test_truth_ratio_from_given_logprobs():
    # Per-token log-probs of the paraphrased answer and of 3 perturbed answers, for 2 questions.
    para = [[-0.5, -1.5], [-2.0]]
    pert = [[[-1.0, -3.0], [-2.0], [-0.1, -0.1, -0.1]], [[-4.0], [-1.0, -1.0], [-3.0]]]
    mean_loss = lambda toks: -sum(toks) / len(toks)
    expected = []
    for p, ps in zip(para, pert):
        p_bar = math.exp(-mean_loss(p))  # P̄ = P^(1/|a|)
        geo = math.prod(math.exp(-mean_loss(x)) for x in ps) ** (1 / len(ps))
        expected.append(geo / p_bar)
    ours = truth_ratio(np.array([mean_loss(p) for p in para]),
                       np.array([[mean_loss(x) for x in ps] for ps in pert]))
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    r = np.array(expected)
    assert forget_truth_ratio_score(r) == pytest.approx(np.mean([min(x, 1 / x) for x in expected]))
    assert utility_truth_ratio_score(r) == pytest.approx(np.mean([max(0, 1 - x) for x in expected]))


@pytest.mark.parametrize("seed", range(10))
def test_auc_is_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    pos, neg = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 25).astype(float)  # with ties
    u = mannwhitneyu(pos, neg).statistic
    assert auc(pos, neg) == pytest.approx(u / (len(pos) * len(neg)))


def test_privleak_formula():
    assert privleak(0.0) == pytest.approx(-100.0)
    assert privleak(0.4772) == pytest.approx(0.0)
    assert privleak(0.6, 0.5) == pytest.approx(20.0)


def test_knowmem_prompt_and_stops():
    icl = [{"question": "Q1?", "answer": "A1"}]
    assert knowmem_prompt(icl, "Q2?") == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
    assert truncate_at_stops(" 1472\n\nQuestion: next") == "1472"
    assert truncate_at_stops("Paris\nQuestion: x") == "Paris"


def test_min_k_scores_by_hand():
    from ..helpers import tiny_llama

    class Tok:
        bos_token_id, pad_token_id = 1, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + int(c) for c in text]}

    model = tiny_llama()
    scores = min_k_scores(model, Tok(), ["12345", "987"], k=0.4)
    for text, score in zip(["12345", "987"], scores):
        ids = torch.tensor([[1] + [3 + int(c) for c in text]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        toks = sorted(float(logp[t, ids[0, t + 1]]) for t in range(ids.shape[1] - 1))
        k = max(1, int(len(toks) * 0.4))
        assert score == pytest.approx(np.mean(toks[:k]), rel=1e-5)
