"""GRU's "+KL" variant and cos_clip (spec 6.2): the KL gradient is added after the rectification
(not projected, not in the EMA); cos_clip removes only the conflict down to cos = -0.5."""

import copy
import math

import numpy as np
import pytest
import torch

from raysweep.engine.engine import UnlearningEngine
from raysweep.objectives import ObjectiveContext, build_objective
from raysweep.synthesis import build_synthesis

from ..helpers import hand_batch, tiny_llama
from .test_methods import SHAPES, flat, random_grads


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_kl_gradient_is_added_after_the_rectification(seed, kl_weight):
    plus_kl = build_synthesis("gru", {"kl_weight": kl_weight})
    plain = build_synthesis("gru")
    ema = np.zeros(sum(math.prod(s) for s in SHAPES))
    for step in range(4):
        g_f, g_r, g_kl = random_grads(seed * 10 + step, n_tasks=3, none_rate=0.0)
        out = flat(plus_kl([g_f, g_r, g_kl]))
        np.testing.assert_allclose(out, flat(plain([g_f, g_r])) + kl_weight * flat(g_kl), rtol=1e-5, atol=1e-6)
        # EMA and projection see only g_r: the guarantee holds for g - w ∇L_KL.
        ema = 0.8 * flat(g_r) + 0.2 * ema
        c = (flat(g_f) + flat(g_r)) @ ema
        assert (out - kl_weight * flat(g_kl)) @ ema == pytest.approx(max(c, 0.0), abs=1e-4 * (1 + abs(c)))


def controlled_pair(cos, norm_u, norm_r, seed=0):
    """g_u (GA base: retain_in_objective false, γ = 1) and g_r with the given cosine and norms."""
    gen = torch.Generator().manual_seed(seed)
    dim = sum(math.prod(s) for s in SHAPES)
    a, b = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    a = a / a.norm()
    b = b - (b @ a) * a
    b = b / b.norm()
    g_r = a * norm_r
    g_u = (cos * a + math.sqrt(1 - cos * cos) * b) * norm_u

    def split(v):
        out, start = [], 0
        for s in SHAPES:
            out.append(v[start:start + math.prod(s)].reshape(s).float())
            start += math.prod(s)
        return out

    return split(g_u), split(g_r)


@pytest.mark.parametrize("cos", [0.3, 0.0, -0.2, -0.5, -0.8, -0.99])
@pytest.mark.parametrize("norm_u,norm_r", [(1.0, 1.0), (1e-6, 1e4), (1e6, 1e-4)])
def test_cos_clip_removes_conflict_only_down_to_minus_one_half(cos, norm_u, norm_r):
    g_u, g_r = controlled_pair(cos, norm_u, norm_r)
    params = {"retain_in_objective": False}
    clipped = flat(build_synthesis("gru", {**params, "cos_clip": True})([g_u, g_r]))
    projected = flat(build_synthesis("gru", params)([g_u, g_r]))
    u, r = flat(g_u), flat(g_r)  # the EMA after one step is 0.8 g_r: the same direction
    if cos >= -0.5:  # no conflict, or mild conflict: identical to GRU's exact projection
        np.testing.assert_allclose(clipped, projected, rtol=1e-5, atol=1e-6 * norm_u)
        if cos >= 0:
            np.testing.assert_allclose(clipped, u, rtol=1e-6, atol=1e-7 * norm_u)
        return
    removed = u - clipped
    # only along ḡ_r, and exactly half of ||g_u||: the part that brings the cosine to -0.5
    along = (removed @ r) / (r @ r) * r
    assert np.linalg.norm(removed - along) <= 1e-5 * norm_u
    assert np.linalg.norm(removed) == pytest.approx(0.5 * norm_u, rel=1e-5)
    residual = clipped @ r
    assert residual == pytest.approx((cos + 0.5) * norm_u * norm_r, rel=1e-4)
    assert residual < 0  # some conflict remains, by design
    cos_after = residual / np.linalg.norm(clipped) / norm_r
    assert cos_after > cos  # less conflict than g_u, more than the exact projection (0)


def test_spec_formula_on_a_flat_reference():
    """g = g_u - (||g_u|| max(cos, -0.5) / ||ḡ_r||) ḡ_r when <g_u, ḡ_r> < 0 (spec 6.2)."""
    for seed in range(10):
        g_f, g_r = random_grads(seed * 3, none_rate=0.0)  # seed % 3 == 0: correlated, conflicting
        method = build_synthesis("gru", {"cos_clip": True, "mu": 0.6})
        out = flat(method([g_f, g_r]))
        gu, ema = flat(g_f) + flat(g_r), 0.6 * flat(g_r)
        c = gu @ ema
        cos = c / np.linalg.norm(gu) / np.linalg.norm(ema)
        expected = gu - (np.linalg.norm(gu) * max(cos, -0.5) / np.linalg.norm(ema)) * ema if c < 0 else gu
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_engine_feeds_the_kl_gradient_as_the_third_task():
    """retain: [nll, kl] gives GRU [ĝ_F, g_R, ∇L_KL] from real backward passes."""
    model = tiny_llama()
    b = hand_batch()
    r = {k: v.clone() for k, v in b.items()}
    r["input_ids"] = torch.where(b["attention_mask"].bool(), (b["input_ids"] * 3) % 35 + 3, b["input_ids"])
    r["labels"] = torch.where(b["labels"] != -100, r["input_ids"], b["labels"])
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))  # so the KL gradient is not zero
    eng = UnlearningEngine(model, build_objective("ga"), [build_objective("nll"), build_objective("kl")],
                           build_synthesis("gru", {"kl_weight": 1.0}), ObjectiveContext(reference_model=ref),
                           lr=0.1, optimizer="sgd")
    grads, _ = eng.task_gradients([(b, r)])
    assert len(grads) == 3 and any(g is not None and g.abs().sum() > 0 for g in grads[2])
    plain = build_synthesis("gru")
    expected = [x + y for x, y in zip(plain(grads[:2]), grads[2])]
    for x, y in zip(eng.synthesis(grads), expected):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
