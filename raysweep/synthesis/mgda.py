"""MGDA common descent direction, as used by MOLLM (spec 7.2).

``λ* = argmin_{λ in simplex} ||Σ λ_i g_i||²``, ``d = Σ λ_i* g_i``, solved exactly from the Gram
matrix (one reduction of m(m+1)/2 scalars) by enumerating the simplex's faces (spec 7.2: the
vertices, every edge with the two-task closed form, the interior); the feasible candidate with the
smallest ``||d||²`` wins. Guarantee (spec 7.2, the KKT condition of this QP):
``<d, g_i> >= ||d||²`` for every task i.

Scale invariance. Task norms in unlearning differ by many orders of magnitude (a GA gradient
grows without bound while a retain gradient shrinks), so nothing in the solve may depend on the
absolute scale: every candidate is computed from the norms ``s_i = ||g_i||`` and the cosines
``C_ij = G_ij / (s_i s_j)`` with homogeneous, cancellation-free formulas, and all tolerances are
relative. The float64 solve is then exact for norms from 1e-8 to 1e8 and norm ratios up to 1e12;
what is left is the fp32 rounding of the Gram matrix (spec 3.2 rule 5) and of ``d`` itself, so
the guarantee holds up to ``tol_i = 1e-5 · S · (||g_i|| + S)`` with ``S = Σ_j λ_j ||g_j||``: the
size of the terms that make up ``<d, g_i>`` and ``||d||²``, not ``||d||²`` itself, which vanishes
near Pareto-stationarity (tests/synthesis/test_mgda_scale.py).

``normalize`` (a common variant, spec 7.2 pitfall) solves on the unit gradients ``g_i/||g_i||``;
a zero gradient stays zero.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from raysweep.lazy_torch import torch
from raysweep.synthesis.base import SynthContext, Synthesis, register
from raysweep.synthesis.primitives import GradList, combine, global_dots

# A face whose vectors are this close to affinely dependent has no interior optimum of its own:
# the hull is then a lower-dimensional face, which the enumeration covers.
DEGENERATE_FACE = 1e-10
# Interior solutions may undershoot 0 by float64 rounding, relative to the largest weight.
FEASIBILITY = 1e-9


def _edge_weights(s_i: float, s_j: float, cos_ij: float) -> tuple[float, float]:
    """Weights on (g_i, g_j) of the min-norm point of the segment [g_i, g_j]: spec 7.2's two-task
    closed form ``λ_i = clip(<g_j - g_i, g_j> / ||g_i - g_j||², 0, 1)``, written so that neither
    weight is computed as ``1 - other`` (which loses a weight of 1e-13 to cancellation)."""
    top = max(s_i, s_j)
    a, b = s_i / top, s_j / top  # homogeneous: only the ratio of the norms matters
    w_i = b * (b - a * cos_ij)  # <g_j - g_i, g_j> / top²
    w_j = a * (a - b * cos_ij)  # <g_i - g_j, g_i> / top²
    if w_i <= 0.0:
        return 0.0, 1.0
    if w_j <= 0.0:
        return 1.0, 0.0
    return w_i / (w_i + w_j), w_j / (w_i + w_j)  # w_i + w_j = ||g_i - g_j||² / top² > 0


def _interior_weights(s: torch.Tensor, cos: torch.Tensor, face: list[int]) -> torch.Tensor | None:
    """Min-norm point of the affine hull of the face's gradients (spec 7.2's interior
    candidate), as weights, or None.

    Parametrised from the face's smallest gradient ``g_k``: ``d = g_k + Σ t_j (g_j - g_k)``, with
    normal equations ``M t = -b`` that are Jacobi-scaled, so only cosines and norm ratios enter.
    """
    k = min(face, key=lambda i: float(s[i]))
    others = [j for j in face if j != k]
    scale = s[face].max()
    u = s / scale  # ratios in (0, 1]

    def inner(i: int, j: int) -> torch.Tensor:  # <g_i, g_j> / scale²
        return u[i] * u[j] * cos[i, j]

    n = len(others)
    M = torch.zeros(n, n, dtype=torch.float64)
    b = torch.zeros(n, dtype=torch.float64)
    for p, j in enumerate(others):
        # ||g_j - g_k||² in a form that keeps its relative precision when g_j ≈ g_k.
        M[p, p] = (u[j] - u[k]) ** 2 + 2 * u[j] * u[k] * (1 - cos[j, k])
        b[p] = inner(k, j) - inner(k, k)
        for q in range(p + 1, n):
            i = others[q]
            M[p, q] = M[q, p] = inner(j, i) - inner(j, k) - inner(i, k) + inner(k, k)
    diag = M.diagonal().sqrt()
    if bool((diag <= 0).any()):
        return None
    Ms = M / diag[:, None] / diag[None, :]
    if float(torch.linalg.det(Ms)) <= DEGENERATE_FACE:
        return None
    t = -torch.linalg.solve(Ms, b / diag) / diag
    lam = torch.zeros(len(s), dtype=torch.float64)
    lam[others] = t
    lam[k] = 1.0 - t.sum()
    if float(lam.min()) < -FEASIBILITY * float(lam.abs().max()):
        return None
    lam = lam.clamp_min(0.0)
    return lam / lam.sum()


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """Exact minimiser of ``λᵀ G λ`` over the probability simplex (spec 7.2), float64,
    scale-invariant: only norm ratios and cosines enter."""
    G = gram.double().cpu()
    m = G.shape[0]
    s = G.diagonal().clamp_min(0.0).sqrt()
    if float(s.max()) == 0.0:  # every gradient is zero: any λ gives d = 0
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    zero = (s == 0).nonzero()
    if len(zero):  # a zero gradient is the min-norm point: d = 0 is Pareto-stationary
        lam = torch.zeros(m, dtype=torch.float64)
        lam[int(zero[0])] = 1.0
        return lam
    cos = (G / s[:, None] / s[None, :]).clamp(-1.0, 1.0)
    cos.fill_diagonal_(1.0)

    def value(lam: torch.Tensor) -> float:
        w = lam * s / s.max()  # ||d||² / max s², computed from O(1) numbers
        return float(w @ cos @ w)

    candidates = [torch.eye(m, dtype=torch.float64)[i] for i in range(m)]
    for i, j in itertools.combinations(range(m), 2):
        lam = torch.zeros(m, dtype=torch.float64)
        lam[i], lam[j] = _edge_weights(float(s[i]), float(s[j]), float(cos[i, j]))
        candidates.append(lam)
    for size in range(3, m + 1):
        for face in itertools.combinations(range(m), size):
            lam = _interior_weights(s, cos, list(face))
            if lam is not None:
                candidates.append(lam)
    return min(candidates, key=value)


@register
@dataclass
class MGDA(Synthesis):
    """Min-norm common descent direction over 2 or 3 task gradients (spec 7.2)."""

    name = "mgda"
    max_tasks = 3
    normalize: bool = False

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        m = len(task_grads)
        pairs = [(i, j) for i in range(m) for j in range(i, m)]
        vals = global_dots([(task_grads[i], task_grads[j]) for i, j in pairs], ctx.reduce_sum)
        gram = torch.zeros(m, m, dtype=torch.float64)
        for (i, j), v in zip(pairs, vals.double().cpu()):
            gram[i, j] = gram[j, i] = v
        scale = torch.ones(m, dtype=torch.float64)
        if self.normalize:
            norms = gram.diagonal().clamp_min(0.0).sqrt()
            scale = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
            gram = gram * scale[:, None] * scale[None, :]
        lam = min_norm_weights(gram)
        self.last_info = {f"mgda_lambda_{i}": float(lam[i]) for i in range(m)}
        return combine([float(lam[i] * scale[i]) for i in range(m)], task_grads)
