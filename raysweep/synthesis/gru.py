"""GRU: gradient rectified unlearning (spec 6.2, 6.3).

``ḡ_r <- μ g_r + (1-μ) ḡ_r`` (μ weighs the *new* retain gradient, as in the official code);
``c = <g_u, ḡ_r>`` over the whole model; if ``c < 0``: ``g = g_u - c/||ḡ_r||² ḡ_r``.
``g_u`` is the base method's whole objective: ``γ ĝ_F + α g_R`` when ``retain_in_objective``
(GradDiff/NPO+GD bases), else ``γ ĝ_F`` (GA/NPO bases). Guarantee: ``<g, ḡ_r> = max(c, 0) >= 0``,
and ``g`` is the closest vector to ``g_u`` with it.

Variants of the official code (spec 6.2), all applied after the rectification:
* ``ce_weight`` ("+ce"): adds ``c_ce g_r``, the current retain NLL gradient.
* "+KL": a third task gradient, ``∇L_KL`` of the retain batch (job: ``retain: [nll, kl]``), is
  added with ``kl_weight`` (the code's ``KL_coef = 1``). It is neither projected nor part of the
  EMA, so it may reintroduce conflict with ``ḡ_r``; the guarantee holds for ``g - kl_weight ∇L_KL``.
* ``cos_clip``: when ``c < 0`` only the part of ``g_u`` along ``ḡ_r`` that brings the cosine to
  ``COS_CLIP = -0.5`` is removed, ``g = g_u - ||g_u|| max(cos, -0.5)/||ḡ_r|| ḡ_r``: full projection
  for ``-0.5 <= cos < 0``, a bounded change ``||g - g_u|| = ||g_u||/2`` with residual
  ``<g, ḡ_r> = (cos + 0.5) ||g_u|| ||ḡ_r|| < 0`` below (some conflict remains, by design).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raysweep.lazy_torch import torch
from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine, global_dots

COS_CLIP = -0.5  # the official code's clip level ("c = -0.5")
TINY = 1e-30  # a zero EMA (no retain signal yet) is never divided by


@register
@dataclass
class GRU(Synthesis):
    name = "gru"
    max_tasks = 3  # [ĝ_F, g_R] or [ĝ_F, g_R, ∇L_KL] ("+KL")
    mu: float = 0.8
    gamma: float = 1.0
    alpha: float = 1.0
    retain_in_objective: bool = True
    ce_weight: float = 0.0
    kl_weight: float = 1.0
    cos_clip: bool = False

    def __post_init__(self):
        if not 0.0 < self.mu <= 1.0:
            raise ValueError(f"gru.mu: {self.mu} is not allowed (0 < mu <= 1)")
        self.ema: GradList | None = None

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        g_f, g_r = task_grads[:2]
        if self.ema is None:  # starts at 0, no bias correction (projection is scale-free)
            self.ema = combine([self.mu], [g_r])
        else:
            self.ema = combine([self.mu, 1.0 - self.mu], [g_r, self.ema])
        g_u = combine([self.gamma, self.alpha if self.retain_in_objective else 0.0], [g_f, g_r])
        pairs = [(g_u, self.ema), (self.ema, self.ema)] + ([(g_u, g_u)] if self.cos_clip else [])
        dots = global_dots(pairs, ctx.reduce_sum)
        c, e2 = dots[0], dots[1].clamp_min(TINY)
        coef = -c / e2  # the exact projection
        if self.cos_clip:
            u_norm, e_norm = dots[2].clamp_min(0).sqrt(), e2.sqrt()
            cos = c / (u_norm * e_norm).clamp_min(TINY)
            coef = -u_norm * torch.clamp(cos, min=COS_CLIP) / e_norm
        coef = torch.where(c < 0, coef, torch.zeros_like(coef))
        self.last_info = {"gru_conflict": float(c < 0)}
        grads, coefs = [g_u, self.ema], [1.0, coef]
        if self.ce_weight:
            grads.append(g_r)
            coefs.append(self.ce_weight)
        if len(task_grads) == 3 and self.kl_weight:
            grads.append(task_grads[2])
            coefs.append(self.kl_weight)
        return combine(coefs, grads)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else [None if t is None else t.clone() for t in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
