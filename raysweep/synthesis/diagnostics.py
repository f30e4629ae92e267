"""Per-step synthesis diagnostics (spec 3.2 rule 7), from one small reduction."""

from __future__ import annotations

from raysweep.lazy_torch import torch
from raysweep.synthesis.primitives import GradList, ReduceSum, count_local, dot_local


def step_diagnostics(g_f: GradList, g_r: GradList, g: GradList, reduce_sum: ReduceSum) -> dict[str, float]:
    """cos(ĝ_F, g_R), ||ĝ_F||, ||g_R||, fraction of conflicting coordinates, cos(g, g_R), ||g||."""
    local = torch.stack(
        [dot_local(g_f, g_r), dot_local(g_f, g_f), dot_local(g_r, g_r), dot_local(g, g_r), dot_local(g, g)]
    )
    counts = count_local(g_f, g_r).to(local.device)
    v = reduce_sum(torch.cat([local, counts])).double().cpu()
    fr, ff, rr, gr, gg, conflicts, total = v.tolist()

    def cos(ab: float, a2: float, b2: float) -> float:
        den = (a2 * b2) ** 0.5
        return ab / den if den > 0 else 0.0

    return {
        "cos_forget_retain": cos(fr, ff, rr),
        "norm_forget": ff**0.5,
        "norm_retain": rr**0.5,
        "conflict_fraction": conflicts / total if total else 0.0,
        "cos_update_retain": cos(gr, gg, rr),
        "norm_update": gg**0.5,
    }
