"""SAGO: sign-align gradient optimisation, the official code's exact rule (spec 4.3).

Per coordinate i: conflict ``C_i = [ĝ_F,i g_R,i < 0]``; ``g_i = α g_R,i`` on conflicts, else
``γ ĝ_F,i`` (the retain gradient is dropped where the two agree). Guarantee:
``g_i g_R,i >= 0`` at every coordinate. ``sago_prefer_retain`` (an ablation in the same code) keeps
``γ ĝ_F,i + α g_R,i`` on non-conflicting coordinates. Purely element-wise: runs shard-locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from raysweep.lazy_torch import torch
from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList


@register
@dataclass
class SAGO(Synthesis):
    name = "sago"
    prefer_retain: ClassVar[bool] = False
    gamma: float = 1.0
    alpha: float = 1.0

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        out: GradList = []
        for f, r in zip(*task_grads):
            if f is None and r is None:
                out.append(None)
                continue
            # A missing gradient is 0: never a conflict (spec 4.3 quirk).
            f = torch.zeros_like(r, dtype=torch.float32) if f is None else f.float()
            r = torch.zeros_like(f) if r is None else r.float()
            agree = self.gamma * f + self.alpha * r if self.prefer_retain else self.gamma * f
            out.append(torch.where(f * r < 0, self.alpha * r, agree))
        return out


@register
@dataclass
class SAGOPreferRetain(SAGO):
    name = "sago_prefer_retain"
    prefer_retain: ClassVar[bool] = True
