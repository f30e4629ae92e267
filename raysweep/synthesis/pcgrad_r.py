"""PCGrad-R: retention-prioritised PCGrad (spec 4.2).

Only the forget gradient is projected, and only where it conflicts with the retain gradient:
``d = <ĝ_F, g_R>``; if ``d < 0``: ``ĝ_F <- ĝ_F - d/(||g_R||² + 1e-10) g_R``; then
``g = γ ĝ_F + α g_R``. ``scope='module'`` (the paper's default) does this per parameter tensor,
``scope='global'`` with one coefficient for the whole model. Guarantee:
``<g_k, g_R,k> >= α ||g_R,k||²`` per tensor (module scope).
"""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.lazy_torch import torch
from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import (
    GradList,
    combine,
    dot_per_tensor_local,
)

PROJECTION_EPS = 1e-10


@register
@dataclass
class PCGradR(Synthesis):
    name = "pcgrad_r"
    gamma: float = 1.0
    alpha: float = 1.0
    scope: str = "module"

    def __post_init__(self):
        if self.scope not in ("module", "global"):
            raise ValueError(f"pcgrad_r.scope: '{self.scope}' is not allowed (allowed: module, global)")

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        g_f, g_r = task_grads
        # Both per-tensor vectors in one reduction: [<ĝ_F,k, g_R,k>..., ||g_R,k||²...].
        n = len(g_f)
        scalars = ctx.reduce_sum(
            torch.cat([dot_per_tensor_local(g_f, g_r), dot_per_tensor_local(g_r, g_r)])
        )
        d, r2 = scalars[:n], scalars[n:]
        if self.scope == "global":
            d, r2 = d.sum().expand(n), r2.sum().expand(n)
        proj = torch.where(d < 0, d / (r2 + PROJECTION_EPS), torch.zeros_like(d))
        self.last_info = {"projected_fraction": float((d < 0).float().mean()) if n else 0.0}
        # γ(ĝ_F - proj g_R) + α g_R  ==  γ ĝ_F + (α - γ proj) g_R
        return combine([self.gamma, self.alpha - self.gamma * proj], [g_f, g_r])
