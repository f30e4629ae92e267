"""G-effect diagnostics (spec 8.1): ``e(D) = <∇R(D), g>`` with the risk ``R`` = NLL on ``D`` and
``g`` the update the optimizer consumes (for an objective alone, ``∇L``). Removal wants
``e(D_u) < 0``, retention ``e(D_r) >= 0``. Reported per layer group (embeddings, ranges of
decoder blocks, final norm + head) and in total; the groups sum to the total exactly. Values are
per measurement (no EMA across batches), computed from separately reduced gradients."""

from __future__ import annotations

import re
from typing import Sequence

import torch

from raysweep.synthesis.primitives import GradList, ReduceSum, dot_per_tensor, identity_reduce

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_groups(param_names: Sequence[str], num_layers: int, block_groups: int = 3) -> list[str]:
    """A group name for each parameter: ``embed``, ``blocks_a-b`` or ``head``."""
    block_groups = max(1, min(block_groups, num_layers))
    bounds = [round(i * num_layers / block_groups) for i in range(block_groups + 1)]
    ranges = [(bounds[i], bounds[i + 1] - 1) for i in range(block_groups)]
    out = []
    for name in param_names:
        m = _BLOCK.search(name)
        if m:
            layer = int(m.group(1))
            lo, hi = next(r for r in ranges if r[0] <= layer <= r[1])
            out.append(f"blocks_{lo}-{hi}")
        elif "embed" in name:
            out.append("embed")
        else:
            out.append("head")  # final norm and lm_head
    return out


def geffect(risk_grad: GradList, update: GradList, groups: Sequence[str], prefix: str,
            reduce_sum: ReduceSum = identity_reduce) -> dict[str, float]:
    per_tensor = dot_per_tensor(risk_grad, update, reduce_sum).double().cpu()
    out: dict[str, float] = {}
    for g, v in zip(groups, per_tensor.tolist()):
        key = f"{prefix}/{g}"
        out[key] = out.get(key, 0.0) + v
    out[f"{prefix}/total"] = float(per_tensor.sum())
    return out
