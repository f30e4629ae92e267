"""IdkDPO (spec 2.6) against a float64 hand computation from token log-probs, its known point
at θ = θ_ref, and the reference cache (refusal rows keyed by their tokens, not by row index)."""

import copy
import math

import pytest
import torch

from raysweep.objectives import ObjectiveContext, build_objective

from ..helpers import direct_token_logprobs, hand_batch, tiny_llama


def with_refusals(batch, refusal_rows):
    """Refusal rows (prompt 4/3 tokens as in hand_batch, then the refusal answer), right-padded."""
    width = max(len(r) for r in refusal_rows)
    ids = torch.zeros(len(refusal_rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attn = torch.zeros_like(ids)
    for i, (r, n_prompt) in enumerate(zip(refusal_rows, (4, 3))):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, n_prompt:len(r)] = torch.tensor(r[n_prompt:])
        attn[i, :len(r)] = 1
    out = dict(batch)
    out.update({"idk_input_ids": ids, "idk_labels": labels, "idk_attention_mask": attn})
    return out


REFUSALS = [[1, 5, 6, 7, 20, 21, 22, 23, 2], [1, 8, 7, 24, 25, 2]]


@pytest.fixture
def models():
    ref = tiny_llama()
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


def hand_loss(policy, ref, batch, beta, c):
    """-c mean_z log σ(β[(log π(w) - log π(l)) - (log π_ref(w) - log π_ref(l))]) in float64."""
    idk = {k[4:]: v for k, v in batch.items() if k.startswith("idk_")}
    lp_w = [sum(r) for r in direct_token_logprobs(policy, idk)]
    lp_l = [sum(r) for r in direct_token_logprobs(policy, batch)]
    ref_w = [sum(r) for r in direct_token_logprobs(ref, idk)]
    ref_l = [sum(r) for r in direct_token_logprobs(ref, batch)]
    terms = []
    for w, l, rw, rl in zip(lp_w, lp_l, ref_w, ref_l):
        x = beta * ((w - l) - (rw - rl))
        terms.append(-math.log1p(math.exp(-x)))  # log σ(x)
    return -c * sum(terms) / len(terms)


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("loss_scale", [None, 1.0])
def test_matches_the_formula(models, beta, loss_scale):
    policy, ref = models
    b = with_refusals(hand_batch(), REFUSALS)
    c = 2 / beta if loss_scale is None else loss_scale
    expected = hand_loss(policy, ref, b, beta, c)
    obj = build_objective("idkdpo", {"beta": beta, "loss_scale": loss_scale})
    got = float(obj(policy, b, ObjectiveContext(reference_model=ref)).detach())
    assert got == pytest.approx(expected, rel=1e-5)
    assert obj.units(b) == 2


def test_known_point_at_the_reference():
    """θ = θ_ref: every margin is 0 and the loss is (2/β) log 2 (open-unlearning), log 2 (TOFU repo)."""
    model = tiny_llama()
    b = with_refusals(hand_batch(), REFUSALS)
    ctx = ObjectiveContext(reference_model=copy.deepcopy(model))
    assert float(build_objective("idkdpo")(model, b, ctx).detach()) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    assert float(build_objective("idkdpo", {"loss_scale": 1.0})(model, b, ctx).detach()) == pytest.approx(
        math.log(2), rel=1e-6)


def test_gradient_at_the_reference_raises_the_refusal_over_the_answer():
    """At θ_ref, ∇L = -(c β/2) mean_z ∇(log π(w) - log π(l)) = -mean_z ∇(log π(w) - log π(l)) for c = 2/β."""
    model = tiny_llama()
    b = with_refusals(hand_batch(), REFUSALS)
    params = list(model.parameters())
    loss = build_objective("idkdpo")(model, b, ObjectiveContext(reference_model=copy.deepcopy(model)))
    g = torch.autograd.grad(loss, params, allow_unused=True)
    from raysweep.objectives.base import model_token_logprobs, sequence_sums

    s_w, _ = sequence_sums(*model_token_logprobs(model, b, prefix="idk_"))
    s_l, _ = sequence_sums(*model_token_logprobs(model, b))
    g_ref = torch.autograd.grad((s_w - s_l).mean(), params, allow_unused=True)  # -(log π(w) - log π(l))
    for a, e in zip(g, g_ref):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_reference_cache_keys_refusals_by_their_tokens(models):
    policy, ref = models
    ctx = ObjectiveContext(reference_model=ref)
    obj = build_objective("idkdpo")
    b = with_refusals(hand_batch(), REFUSALS)
    first = float(obj(policy, b, ctx).detach())
    ctx.reference_model = None  # the same rows and refusals again: served from the cache
    assert float(obj(policy, b, ctx).detach()) == pytest.approx(first)
    # Same row indices, another refusal drawn (another epoch): must not reuse the cached row.
    other = with_refusals(hand_batch(), [[1, 5, 6, 7, 26, 27, 2], [1, 8, 7, 24, 25, 2]])
    with pytest.raises(RuntimeError, match="reference model"):
        obj(policy, other, ctx)
    ctx.reference_model = ref
    assert float(obj(policy, other, ctx).detach()) == pytest.approx(hand_loss(policy, ref, other, 0.1, 20.0), rel=1e-5)
