"""KL retain regulariser to the frozen pre-unlearning model (spec 2.3)."""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.lazy_torch import F, torch
from raysweep.objectives.base import Objective, register


@register
@dataclass
class KL(Objective):
    """``KL(π_ref || π_θ)`` per position, averaged over the attended positions.

    ``unmasked=True`` reproduces the reference code's ``batchmean`` over every position,
    padding included, for parity with published numbers.
    """

    name = "kl"
    role = "retain"
    needs_reference = True
    unmasked: bool = False

    def __call__(self, model, batch, ctx):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        with torch.no_grad():
            ref = ctx.reference_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp, logq = F.log_softmax(logits, -1), F.log_softmax(ref, -1)
        per_pos = (logq.exp() * (logq - logp)).sum(-1)  # [B, T]
        if self.unmasked:
            return per_pos.sum() / ctx.normaliser(per_pos.numel())
        mask = batch["attention_mask"].to(per_pos.dtype)
        return (per_pos * mask).sum() / ctx.normaliser(mask.sum())

    def units(self, batch: dict) -> int:
        return batch["attention_mask"].numel() if self.unmasked else int(batch["attention_mask"].sum())
