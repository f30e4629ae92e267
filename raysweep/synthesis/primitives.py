"""Gradient primitives shared by every synthesis method (spec 3.5, 3.2 rules 3, 5, 6).

A *gradient list* is a ``list[Tensor | None]`` aligned with the model's trainable parameters;
``None`` is a missing gradient and counts as 0. Nothing here flattens the model's gradient.

Scalars are computed as **local partial sums** in fp32 and then passed through ``reduce_sum``,
which is the identity when every rank holds the whole (already reduced) gradient and an
``all_reduce(SUM)`` of one small vector when each rank holds only a shard (FSDP/ZeRO style).
Methods stack all the scalars they need into one vector, so that is a single collective call.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from raysweep.lazy_torch import torch

# Type aliases for annotations only (strings: naming torch.Tensor here would import torch).
GradList = "list[Optional[torch.Tensor]]"
ReduceSum = "Callable[[torch.Tensor], torch.Tensor]"


def identity_reduce(x: torch.Tensor) -> torch.Tensor:
    return x


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.float()


def dot_per_tensor_local(a: GradList, b: GradList) -> torch.Tensor:
    """Local ``<a_k, b_k>`` per tensor k, fp32; 0 where either gradient is missing."""
    device = _device_of(a, b)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    # One vector on the gradients' device: no host sync per tensor.
    parts = [
        torch.sum(_f32(x) * _f32(y)) if x is not None and y is not None else zero
        for x, y in zip(a, b)
    ]
    return torch.stack(parts) if parts else zero.reshape(0)


def _device_of(*lists: GradList) -> torch.device:
    for grads in lists:
        for t in grads:
            if t is not None:
                return t.device
    return torch.device("cpu")


def dot_local(a: GradList, b: GradList) -> torch.Tensor:
    return dot_per_tensor_local(a, b).sum()


def dot_per_tensor(a: GradList, b: GradList, reduce_sum: ReduceSum = identity_reduce) -> torch.Tensor:
    """``{tensor id: <a_k, b_k>}`` as a vector, summed over shards by one reduction."""
    return reduce_sum(dot_per_tensor_local(a, b))


def global_dots(
    pairs: Sequence[tuple[GradList, GradList]], reduce_sum: ReduceSum = identity_reduce
) -> torch.Tensor:
    """Several global inner products at the cost of one small reduction."""
    return reduce_sum(torch.stack([dot_local(a, b) for a, b in pairs]))


def dot(a: GradList, b: GradList, reduce_sum: ReduceSum = identity_reduce) -> torch.Tensor:
    return global_dots([(a, b)], reduce_sum)[0]


def norm2(a: GradList, reduce_sum: ReduceSum = identity_reduce) -> torch.Tensor:
    return dot(a, a, reduce_sum)


def count_local(a: GradList, b: GradList) -> torch.Tensor:
    """Local (conflicting coordinates, present coordinates) counts between ``a`` and ``b``."""
    device = _device_of(a, b)
    conflicts = torch.zeros((), dtype=torch.float32, device=device)
    total = 0
    for x, y in zip(a, b):
        ref = x if x is not None else y
        if ref is None:
            continue
        total += ref.numel()
        if x is not None and y is not None:
            conflicts = conflicts + torch.count_nonzero((_f32(x) * _f32(y)) < 0)
    return torch.stack([conflicts, torch.tensor(float(total), device=device)])


def combine(coefs: Sequence[torch.Tensor | float], grads: Sequence[GradList]) -> GradList:
    """``sum_i coefs[i][k] * grads[i][k]`` per tensor, where a coefficient is a scalar or a
    per-tensor vector. The result is ``None`` only where every input is missing."""
    n = len(grads[0])
    out: GradList = []
    for k in range(n):
        acc = None
        for c, g in zip(coefs, grads):
            if g[k] is None:
                continue
            ck = c[k] if isinstance(c, torch.Tensor) and c.ndim == 1 else c
            term = _f32(g[k]) * (ck.to(g[k].device) if isinstance(ck, torch.Tensor) else ck)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out
