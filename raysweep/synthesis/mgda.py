"""MGDA common descent direction, as used by MOLLM (spec 7.2).

``λ* = argmin_{λ in simplex} ||Σ λ_i g_i||²``, ``d = Σ λ_i* g_i``. Solved exactly from the Gram
matrix (one reduction of m(m+1)/2 scalars) by enumerating the simplex's faces: every vertex, every
edge (the two-task closed form), and the interior (KKT system); the smallest feasible value
wins. Guarantee: ``<d, g_i> >= ||d||²`` for every task i. ``normalize`` solves on unit gradients
(a common variant; off by default).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine, global_dots


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """Exact minimiser of ``λᵀ G λ`` over the probability simplex (float64)."""
    G = gram.double()
    m = G.shape[0]
    best, best_val = None, float("inf")
    for size in range(1, m + 1):
        for face in itertools.combinations(range(m), size):
            idx = list(face)
            sub = G[idx][:, idx]
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = sub
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            # lstsq: a singular face (parallel gradients) still yields a point on the face.
            sol = torch.linalg.lstsq(kkt, rhs.unsqueeze(1)).solution.squeeze(1)[:size]
            if (sol < -1e-12).any() or abs(float(sol.sum()) - 1.0) > 1e-9:
                continue
            lam = torch.zeros(m, dtype=torch.float64)
            lam[idx] = sol.clamp_min(0.0)
            lam = lam / lam.sum()
            val = float(lam @ G @ lam)
            if val < best_val - 1e-15:
                best, best_val = lam, val
    return best


@register
@dataclass
class MGDA(Synthesis):
    name = "mgda"
    max_tasks = 3
    normalize: bool = False
    eps: float = 1e-8

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        m = len(task_grads)
        pairs = [(i, j) for i in range(m) for j in range(i, m)]
        vals = global_dots([(task_grads[i], task_grads[j]) for i, j in pairs], ctx.reduce_sum)
        gram = torch.zeros(m, m, dtype=torch.float64)
        for (i, j), v in zip(pairs, vals.double().cpu()):
            gram[i, j] = gram[j, i] = v
        scale = torch.ones(m, dtype=torch.float64)
        if self.normalize:
            scale = 1.0 / (gram.diagonal().sqrt() + self.eps)
            gram = gram * scale[:, None] * scale[None, :]
        lam = min_norm_weights(gram)
        self.last_info = {f"mgda_lambda_{i}": float(lam[i]) for i in range(m)}
        return combine([float(lam[i] * scale[i]) for i in range(m)], task_grads)
