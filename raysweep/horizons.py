"""AutoLR's horizon scales (spec 5.4), below both packages that need them: the engine scales its
rate by them, and ``ngdiff`` checks its ``autolr_horizon`` against them (without importing torch)."""

from __future__ import annotations

import math

# Horizon scales s_t of spec 5.4, as a function of the fraction t/T of the run already done.
HORIZONS = {
    "constant": lambda frac: 1.0,
    "linear": lambda frac: 1.0 - frac,
    "cosine": lambda frac: 0.5 * (1.0 + math.cos(math.pi * frac)),
}


def horizon_scale(kind: str, step: int, total: int) -> float:
    """``s_t`` of spec 5.4 at optimizer step ``t = step`` of ``T = total``: 1 ("constant"),
    ``1 - t/T`` ("linear") or ``(1 + cos(πt/T))/2`` ("cosine")."""
    return HORIZONS[kind](min(step / max(1, total), 1.0))
