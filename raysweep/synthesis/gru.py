"""GRU: gradient rectified unlearning (spec 6.2).

``ḡ_r <- μ g_r + (1-μ) ḡ_r`` (μ weighs the *new* retain gradient, as in the official code);
``c = <g_u, ḡ_r>`` over the whole model; if ``c < 0``: ``g = g_u - c/||ḡ_r||² ḡ_r``.
``g_u`` is the base method's whole objective: ``γ ĝ_F + α g_R`` when ``retain_in_objective``
(GradDiff/NPO+GD bases), else ``γ ĝ_F`` (GA/NPO bases). ``ce_weight`` adds ``c_ce g_r`` after
the projection (the code's "+ce" variant). Guarantee: ``<g, ḡ_r> = max(c, 0) >= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine, global_dots


@register
@dataclass
class GRU(Synthesis):
    name = "gru"
    mu: float = 0.8
    gamma: float = 1.0
    alpha: float = 1.0
    retain_in_objective: bool = True
    ce_weight: float = 0.0

    def __post_init__(self):
        if not 0.0 < self.mu <= 1.0:
            raise ValueError(f"gru.mu: {self.mu} is not allowed (0 < mu <= 1)")
        self.ema: GradList | None = None

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        g_f, g_r = task_grads
        if self.ema is None:  # starts at 0, no bias correction (projection is scale-free)
            self.ema = combine([self.mu], [g_r])
        else:
            self.ema = combine([self.mu, 1.0 - self.mu], [g_r, self.ema])
        g_u = combine([self.gamma, self.alpha if self.retain_in_objective else 0.0], [g_f, g_r])
        c, e2 = global_dots([(g_u, self.ema), (self.ema, self.ema)], ctx.reduce_sum)
        self.last_info = {"gru_conflict": float(c < 0)}
        coef = torch.where(c < 0, -c / e2.clamp_min(1e-30), torch.zeros_like(c))
        grads, coefs = [g_u, self.ema], [1.0, coef]
        if self.ce_weight:
            grads.append(g_r)
            coefs.append(self.ce_weight)
        return combine(coefs, grads)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else [None if t is None else t.clone() for t in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
