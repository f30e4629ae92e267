"""Each objective against a direct computation from token log-probs on a hand-made batch."""

import copy
import math

import numpy as np
import pytest
import torch

from raysweep.objectives import OBJECTIVES, ObjectiveContext, build_objective
from raysweep.objectives.uce import log_one_minus_p
from raysweep.registry import UnknownNameError

from ..helpers import direct_token_logprobs, hand_batch, tiny_llama


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def shifted_model(model):
    """A model that differs from ``model`` (the frozen reference) in every weight."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def loss(name, model, batch, ref=None, **params):
    return float(build_objective(name, params)(model, batch, ObjectiveContext(reference_model=ref)).detach())


def test_ga_and_nll_pool_all_label_tokens(model):
    b = hand_batch()
    tokens = sum(direct_token_logprobs(model, b), [])
    nll = -sum(tokens) / len(tokens)  # pooled over the batch, not a mean of row means
    assert loss("nll", model, b) == pytest.approx(nll, rel=1e-5)
    assert loss("ga", model, b) == pytest.approx(-nll, rel=1e-5)


def test_idk_scores_the_refusal_answer(model):
    b = hand_batch()
    idk = {"input_ids": torch.tensor([[1, 5, 6, 7, 20, 21, 2]]), "attention_mask": torch.ones(1, 7, dtype=torch.long),
           "labels": torch.tensor([[-100, -100, -100, -100, 21, 2, -100]])}
    idk["labels"][0, 4] = 20
    b.update({f"idk_{k}": v for k, v in idk.items()})
    toks = direct_token_logprobs(model, idk)[0]
    assert loss("idk", model, b) == pytest.approx(-sum(toks) / len(toks), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_matches_formula(model, shifted_model, beta):
    b = hand_batch()
    s_theta = [-sum(r) for r in direct_token_logprobs(shifted_model, b)]
    s_ref = [-sum(r) for r in direct_token_logprobs(model, b)]
    expected = -(2 / beta) * np.mean([math.log(1 / (1 + math.exp(beta * (sr - st))))
                                      for st, sr in zip(s_theta, s_ref)])
    assert loss("npo", shifted_model, b, ref=model, beta=beta) == pytest.approx(expected, rel=1e-5)


def test_npo_known_point_and_gradient_at_the_reference(model):
    """At θ = θ_ref: r = 0, L = (2/β) log 2, and ∇L = ∇ mean_z log π(y|x) (weight w = 1)."""
    b = hand_batch()
    ref = copy.deepcopy(model)
    beta = 0.3
    obj = build_objective("npo", {"beta": beta})
    l = obj(model, b, ObjectiveContext(reference_model=ref))
    assert float(l) == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    g_npo = torch.autograd.grad(l, list(model.parameters()), allow_unused=True)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    from raysweep.objectives.base import sequence_sums, token_logprobs

    s, _ = sequence_sums(*token_logprobs(logits, b["labels"]))
    g_ref = torch.autograd.grad((-s).mean(), list(model.parameters()), allow_unused=True)
    for a, c in zip(g_npo, g_ref):
        if a is not None:
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_npo_reference_logprobs_are_cached(model, shifted_model):
    b = hand_batch()
    ctx = ObjectiveContext(reference_model=model)
    obj = build_objective("npo", {})
    first = float(obj(shifted_model, b, ctx))
    assert len(ctx._ref_token_logprobs) == 2
    ctx.reference_model = None  # a second call must not need the reference model any more
    assert float(obj(shifted_model, b, ctx)) == pytest.approx(first)


@pytest.mark.parametrize("beta,delta", [(2.5, 0.0), (0.7, 0.1)])
def test_simnpo_matches_formula(model, beta, delta):
    b = hand_batch()
    lbar = [-sum(r) / len(r) for r in direct_token_logprobs(model, b)]
    expected = -(2 / beta) * np.mean([math.log(1 / (1 + math.exp(-beta * (x - delta)))) for x in lbar])
    assert loss("simnpo", model, b, beta=beta, delta=delta) == pytest.approx(expected, rel=1e-5)


def test_simnpo_known_point(model):
    """With δ equal to the (single) row's ℓ̄, the loss is (2/β) log 2."""
    b = {k: v[:1] for k, v in hand_batch().items()}
    lbar = -np.mean(direct_token_logprobs(model, b)[0])
    assert loss("simnpo", model, b, beta=2.0, delta=lbar) == pytest.approx(math.log(2), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 5.0])
def test_wga_matches_formula(model, alpha):
    b = hand_batch()
    toks = sum(direct_token_logprobs(model, b), [])
    expected = np.mean([math.exp(alpha * lp) * lp for lp in toks])
    assert loss("wga", model, b, alpha=alpha) == pytest.approx(expected, rel=1e-5)
    if alpha == 0.0:
        assert loss("wga", model, b, alpha=0.0) == pytest.approx(loss("ga", model, b), rel=1e-6)


@pytest.mark.parametrize("name,beta,alpha", [("tnpo", 4.0, 0.0), ("wtnpo", 4.0, 1.5)])
def test_tnpo_family_matches_formula(model, shifted_model, name, beta, alpha):
    b = hand_batch()
    toks = sum(direct_token_logprobs(shifted_model, b), [])
    ref_toks = sum(direct_token_logprobs(model, b), [])
    w = [2 * math.exp((beta + alpha) * lp) / (math.exp(beta * lp) + math.exp(beta * lr) + 1e-5)
         for lp, lr in zip(toks, ref_toks)]
    expected = np.mean([wi * lp for wi, lp in zip(w, toks)])
    assert loss(name, shifted_model, b, ref=model) == pytest.approx(expected, rel=1e-5)


def test_uce_matches_formula(model):
    b = hand_batch()
    toks = sum(direct_token_logprobs(model, b), [])
    expected = -np.mean([math.log(1 - math.exp(lp)) for lp in toks])
    assert loss("uce", model, b) == pytest.approx(expected, rel=1e-5)


def test_uce_stays_finite_where_ga_gradient_blows_up():
    """As p_y -> 0, GA's d/dp log p = 1/p explodes while UCE's logit gradient (L1 = 2 p_y) vanishes;
    as p_y -> 1 the stable form stays finite where the naive log(1 - softmax) is -inf."""
    for p_target in (1e-2, 1e-4, 1e-6):
        logits = torch.zeros(1, 5, dtype=torch.float64)
        logits[0, 0] = math.log(p_target * 4 / (1 - p_target))  # softmax -> p_target at index 0
        logits.requires_grad_(True)
        (-log_one_minus_p(logits, torch.tensor([0]))).sum().backward()
        p = torch.softmax(logits.detach(), -1)[0, 0]
        assert float(logits.grad.abs().sum()) == pytest.approx(2 * float(p), rel=1e-3)
        prob = p.clone().requires_grad_(True)
        torch.log(prob).backward()
        assert float(prob.grad) == pytest.approx(1 / float(p), rel=1e-3)
    assert float(prob.grad) > 1e5 and float(logits.grad.abs().sum()) < 1e-5

    confident = torch.tensor([[40.0, 0.0, 0.0, 0.0]], requires_grad=True)  # fp32, as in training
    naive = torch.log(1 - torch.softmax(confident, -1)[0, 0])
    stable = log_one_minus_p(confident, torch.tensor([0]))
    assert torch.isinf(naive)
    assert torch.isfinite(stable).all() and float(stable) == pytest.approx(math.log(3) - 40, abs=1e-3)
    (-stable).sum().backward()
    assert torch.isfinite(confident.grad).all()


def test_kl_masked_and_unmasked(model, shifted_model):
    b = hand_batch()
    with torch.no_grad():
        lp = torch.log_softmax(shifted_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double(), -1)
        lq = torch.log_softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.double(), -1)
    per_pos = (lq.exp() * (lq - lp)).sum(-1)
    m = b["attention_mask"].double()
    assert loss("kl", shifted_model, b, ref=model) == pytest.approx(float((per_pos * m).sum() / m.sum()), rel=1e-5)
    assert loss("kl", shifted_model, b, ref=model, unmasked=True) == pytest.approx(float(per_pos.mean()), rel=1e-5)
    assert loss("kl", model, b, ref=copy.deepcopy(model)) == pytest.approx(0.0, abs=1e-6)


def test_rmu_forget_and_retain(model, shifted_model):
    b = hand_batch()
    layer, c = 1, 6.5
    captured = {}
    h = model.model.layers[layer].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    h.remove()
    u = torch.rand(16, generator=torch.Generator().manual_seed(0))
    u = u / u.norm()
    mask = b["labels"] != -100  # the label positions themselves, no shift (spec 2.7)
    per_pos = ((captured["h"].double() - c * u.double()) ** 2).mean(-1)
    expected = float(torch.stack([per_pos[r][mask[r]].mean() for r in range(2)]).mean())
    assert loss("rmu", model, b, layer=layer, steering_coeff=c) == pytest.approx(expected, rel=1e-5)
    assert loss("rmu_retain", model, b, ref=copy.deepcopy(model), layer=layer) == pytest.approx(0.0, abs=1e-10)
    assert loss("rmu_retain", shifted_model, b, ref=model, layer=layer) > 0
    names = dict(model.named_parameters())
    allowed = build_objective("rmu", {"layer": layer}).trainable_filter(model)
    assert allowed and all(n in names for n in allowed)
    with pytest.raises(ValueError, match="rmu.layer"):
        loss("rmu", model, b, layer=7)


def test_registry_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean 'simnpo'"):
        build_objective("simnpoo")
    with pytest.raises(UnknownNameError, match="did you mean 'beta'"):
        build_objective("npo", {"betta": 1})
    assert {"ga", "nll", "kl", "npo", "simnpo", "wga", "tnpo", "uce", "idk", "rmu"} <= set(OBJECTIVES.names())
