"""NGDiff: normalised gradient difference (spec 5.2), with optional AutoLR (spec 5.4).

In our sign convention ``g = g_R/(||g_R|| + ε) + ĝ_F/(||ĝ_F|| + ε)`` with global norms:
the bisector of unit retain-descent and unit forget-ascent. Guarantees (spec 5.3):
``<g, g_R> >= 0 >= <g, g_F>`` with ``g_F = -ĝ_F``. AutoLR is run by the engine
(``raysweep.engine.autolr``) when ``autolr`` is true; its learning rate is state of this method.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from raysweep.horizons import HORIZONS
from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine, global_dots


@register
@dataclass
class NGDiff(Synthesis):
    name = "ngdiff"
    eps: float = 1e-8
    autolr: bool = False
    autolr_interval: int = 5
    # Horizon scale s_t of spec 5.4: "constant" (1), "linear" (1 - t/T) or "cosine"
    # ((1 + cos(pi t/T))/2); see raysweep.horizons.horizon_scale.
    autolr_horizon: str = "constant"

    def __post_init__(self):
        self.autolr_lr: float | None = None  # set by the engine's AutoLR; None = optimizer's lr
        if self.autolr_interval < 1:
            raise ValueError(f"ngdiff.autolr_interval: {self.autolr_interval} is not allowed (>= 1)")
        if self.autolr_horizon not in HORIZONS:
            close = difflib.get_close_matches(str(self.autolr_horizon), list(HORIZONS), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"ngdiff.autolr_horizon: '{self.autolr_horizon}' is not allowed ({', '.join(HORIZONS)}){hint}"
            )

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        g_f, g_r = task_grads
        f2, r2 = global_dots([(g_f, g_f), (g_r, g_r)], ctx.reduce_sum)
        return combine([1.0 / (f2.sqrt() + self.eps), 1.0 / (r2.sqrt() + self.eps)], [g_f, g_r])

    def state_dict(self) -> dict[str, Any]:
        return {"autolr_lr": self.autolr_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.autolr_lr = state.get("autolr_lr")
