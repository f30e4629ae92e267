"""Preference-style forget losses: NPO (spec 2.4) and SimNPO (spec 2.5)."""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.lazy_torch import F
from raysweep.objectives.base import Objective, model_token_logprobs, register, sequence_sums


@register
@dataclass
class NPO(Objective):
    """``-(2/β) mean_z log σ(-β r_θ(z))`` with ``r_θ = S_ref(z) - S_θ(z)`` (sequence sums)."""

    name = "npo"
    needs_reference = True
    beta: float = 0.1

    def __call__(self, model, batch, ctx):
        logp, mask = model_token_logprobs(model, batch)
        ref_logp, _ = ctx.reference_token_logprobs(batch, split="forget")
        s_theta, _ = sequence_sums(logp, mask)
        s_ref, _ = sequence_sums(ref_logp, mask)
        r = s_ref - s_theta
        return -(2.0 / self.beta) * F.logsigmoid(-self.beta * r).sum() / ctx.normaliser(len(r))

    def units(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])  # a mean over sequences


@register
@dataclass
class SimNPO(Objective):
    """``-(2/β) mean_z log σ(β (ℓ̄_θ(z) - δ))``: reference-free and length-normalised."""

    name = "simnpo"
    beta: float = 2.5
    delta: float = 0.0

    def __call__(self, model, batch, ctx):
        s, length = sequence_sums(*model_token_logprobs(model, batch))
        return -(2.0 / self.beta) * F.logsigmoid(self.beta * (s / length - self.delta)).sum() / ctx.normaliser(len(s))

    def units(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])
