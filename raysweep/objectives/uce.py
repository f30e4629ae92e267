"""UCE, MOLLM's unlearning cross-entropy (spec 7.1): ``-(1/N) Σ_t log(1 - p_t)``.

Bounded below by 0, and its gradient vanishes as a token is forgotten (GA's blows up as 1/p).
Computed stably: ``log(1 - p_y) = logsumexp_{v≠y} z_v - logsumexp_v z_v``.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.lazy_torch import torch
from raysweep.objectives.base import Objective, register, shifted_labels


def log_one_minus_p(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits if logits.dtype == torch.float64 else logits.float()
    masked = logits.scatter(-1, target.unsqueeze(-1), float("-inf"))
    return torch.logsumexp(masked, -1) - torch.logsumexp(logits, -1)


@register
@dataclass
class UCE(Objective):
    name = "uce"

    def __call__(self, model, batch, ctx):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target, mask = shifted_labels(batch["labels"])
        l1mp = log_one_minus_p(logits, target.clamp_min(0))
        return -(l1mp * mask).sum() / ctx.normaliser(mask.sum())
