"""IdkDPO (spec 2.6): DPO with TOFU's refusal as the winner and the true forget answer as the loser.

``L = -c · mean_z log σ(β [(log π_θ(a_idk) - log π_θ(a_f)) - (log π_ref(a_idk) - log π_ref(a_f))])``
with log-probabilities summed over answer tokens and ``π_ref`` the frozen pre-unlearning model.
``c = 2/β`` (open-unlearning, the default: ``loss_scale: null``); the TOFU repo uses ``c = 1``
(``loss_scale: 1.0``) and no retain term, while open-unlearning adds ``α·NLL(B_r)`` with
``α = γ = 1`` (retain nll, GradDiff). At θ = θ_ref the loss is ``c·log 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raysweep.lazy_torch import F
from raysweep.objectives.base import Objective, model_token_logprobs, register, sequence_sums


@register
@dataclass
class IdkDPO(Objective):
    name = "idkdpo"
    needs_reference = True
    needs_idk = True
    beta: float = 0.1
    loss_scale: Optional[float] = None  # c; None = 2/β

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"idkdpo.beta: {self.beta} is not allowed (> 0)")

    def __call__(self, model, batch, ctx):
        if "idk_input_ids" not in batch:
            raise KeyError("the idkdpo objective needs refusal batches (idk_input_ids); the data loader did not build them")
        # sequence_sums gives S = -log π(answer | question), summed over the answer tokens.
        s_win, _ = sequence_sums(*model_token_logprobs(model, batch, prefix="idk_"))
        s_lose, _ = sequence_sums(*model_token_logprobs(model, batch))
        ref_win, win_mask = ctx.reference_token_logprobs(batch, split="forget", prefix="idk_")
        ref_lose, lose_mask = ctx.reference_token_logprobs(batch, split="forget")
        s_ref_win, _ = sequence_sums(ref_win, win_mask)
        s_ref_lose, _ = sequence_sums(ref_lose, lose_mask)
        margin = (s_lose - s_win) - (s_ref_lose - s_ref_win)  # log-ratio of winner over loser vs the reference
        scale = 2.0 / self.beta if self.loss_scale is None else self.loss_scale
        return -scale * F.logsigmoid(self.beta * margin).sum() / ctx.normaliser(len(margin))

    def units(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])  # a mean over forget rows
