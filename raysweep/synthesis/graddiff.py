"""GradDiff: the plain weighted sum ``g = γ ĝ_F + α g_R`` (spec 2.2)."""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine


@register
@dataclass
class GradDiff(Synthesis):
    """Weighted sum of all task gradients. With three tasks the third gets ``alpha2``."""

    name = "graddiff"
    max_tasks = 3
    gamma: float = 1.0
    alpha: float = 1.0
    alpha2: float = 1.0

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        weights = [self.gamma, self.alpha, self.alpha2][: len(task_grads)]
        return combine(weights, task_grads)
