"""AutoLR via GeN (spec 5.4), without double-stepping the optimizer.

For SGD, Adam and AdamW the parameter change of one step is proportional to the learning rate
(moments and momentum do not depend on it; AdamW's decoupled decay is ``lr·wd·θ``). So we take the
real optimizer step once at the current ``η``, read ``Δ = θ1 - θ0 = -η d``, probe the retain loss
at ``θ0 + rΔ`` for ``r ∈ {-1, +1, 0}``, fit the quadratic, and finally set
``θ = θ0 + (η_new/η) Δ``: exactly the step the optimizer would have taken with ``η_new``, and
its state was updated once. A 3-point fit is exact, so its R² is 1 and the GeN R² test is moot.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SMOOTHING = 0.9


def gen_learning_rate(lr: float, losses: dict[int, float], horizon_scale: float = 1.0) -> tuple[float, dict]:
    """New η from probe losses ``{-1: L(θ0+Δ·-1), 0: L(θ0), 1: L(θ0+Δ)}`` (GeN update rule)."""
    if lr <= 0:  # a step at lr 0 (warm-up's first) moves nothing: no curve to fit, η is kept
        return lr, {"autolr_fit": 0.0}
    lm, l0, lp = losses[-1], losses[0], losses[1]
    if not all(math.isfinite(x) for x in (lm, l0, lp)):
        return lr / 2, {"autolr_fit": -1.0}
    a = (lp + lm - 2 * l0) / lr**2
    b = (lm - lp) / (2 * lr)
    if a > 0 and b > 0:
        target = min(max(b / a, lr / 2), 2 * lr)
        return SMOOTHING * lr + (1 - SMOOTHING) * horizon_scale * target, {"autolr_fit": 1.0, "autolr_opt_lr": b / a}
    return lr, {"autolr_fit": 0.0}


@torch.no_grad()
def autolr_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    probe_loss: Callable[[], float],
    horizon_scale: float = 1.0,
) -> tuple[float, dict]:
    """Take the optimizer step with an adapted η; returns (η_new, info)."""
    lr = optimizer.param_groups[0]["lr"]
    if lr <= 0:  # Δ = 0: every probe would see θ0; the step still advances the moments, as without AutoLR
        optimizer.step()
        return gen_learning_rate(lr, {}, horizon_scale)
    theta0 = [p.detach().clone() for p in params]
    optimizer.step()
    delta = [p.detach() - t0 for p, t0 in zip(params, theta0)]
    losses = {}
    for r in (-1, 1, 0):
        for p, t0, d in zip(params, theta0, delta):
            p.copy_(t0 + r * d)
        losses[r] = float(probe_loss())
    new_lr, info = gen_learning_rate(lr, losses, horizon_scale)
    for p, t0, d in zip(params, theta0, delta):
        p.copy_(t0 + (new_lr / lr) * d)
    for group in optimizer.param_groups:
        group["lr"] = new_lr
    info.update({f"autolr_probe_{k}": v for k, v in losses.items()})
    return new_lr, info
