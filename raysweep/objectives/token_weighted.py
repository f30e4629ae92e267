"""Token-weighted forget losses from the G-effect paper (spec 8.3): WGA, TNPO, WTNPO.

All are ``-mean_t(w_t ℓ_t)`` over the batch's label tokens with stop-gradient weights ``w_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.lazy_torch import torch
from raysweep.objectives.base import Objective, model_token_logprobs, register


def _weighted_ascent(weights: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor, ctx) -> torch.Tensor:
    # -mean_t(w_t ℓ_t) = mean_t(w_t log p_t)
    return (weights.detach() * logp * mask).sum() / ctx.normaliser(mask.sum())


@register
@dataclass
class WGA(Objective):
    """Weighted GA: ``w_t = sg(p_t^α)``. α = 1 (authors' open-unlearning config) cancels 1/p_t."""

    name = "wga"
    alpha: float = 1.0

    def __call__(self, model, batch, ctx):
        logp, mask = model_token_logprobs(model, batch)
        return _weighted_ascent(torch.exp(self.alpha * logp), logp, mask, ctx)


@register
@dataclass
class TNPO(Objective):
    """Token-wise NPO: ``w_t = sg(2 p_t^(β+α) / (p_t^β + p_ref,t^β + 1e-5))``; α = 0 is TNPO."""

    name = "tnpo"
    needs_reference = True
    beta: float = 4.0
    alpha: float = 0.0

    def __call__(self, model, batch, ctx):
        logp, mask = model_token_logprobs(model, batch)
        ref_logp, _ = ctx.reference_token_logprobs(batch, split="forget")
        p_b, ref_b = torch.exp(self.beta * logp), torch.exp(self.beta * ref_logp)
        w = 2.0 * torch.exp((self.beta + self.alpha) * logp) / (p_b + ref_b + 1e-5)
        return _weighted_ascent(w, logp, mask, ctx)


@register
@dataclass
class WTNPO(TNPO):
    """Weighted TNPO (spec 8.3): TNPO with α = 1.5."""

    name = "wtnpo"
    alpha: float = 1.5
