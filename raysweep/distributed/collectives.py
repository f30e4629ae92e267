"""Collectives for data-parallel unlearning (spec 3.2).

* ``mean_task_grads``: every task gradient all-reduced **on its own** (rule 1), coalesced into a
  few flat buckets per task instead of one call per tensor. A gradient missing on some ranks is
  treated as 0 there (rule 6); it stays ``None`` only where it is missing on every rank.
* ``sum_scalars``: one all-reduce of a small vector - the shard-aware ``reduce_sum`` of the
  synthesis primitives when gradients are sharded, and the global unit counts of a step.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from raysweep.synthesis.primitives import GradList

BUCKET_BYTES = 32 * 1024 * 1024


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_scalars(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    y = x.detach().clone()
    if dist.get_backend() == "nccl" and not y.is_cuda:
        y = y.cuda()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def _presence(grads: list[GradList]) -> list[list[bool]]:
    """Which tensors exist on *any* rank, for every task, with one tiny all-reduce."""
    flags = torch.tensor([[g is not None for g in task] for task in grads], dtype=torch.float32)
    return (sum_scalars(flags) > 0).tolist()


def _buckets(tensors: list[torch.Tensor], limit: int = BUCKET_BYTES) -> list[list[int]]:
    out, cur, size = [], [], 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if cur and (size + nbytes > limit or t.dtype != tensors[cur[0]].dtype or t.device != tensors[cur[0]].device):
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += nbytes
    if cur:
        out.append(cur)
    return out


class TaskGradReducer:
    """All-reduce (mean) each task's gradient list separately, in flat buckets (in place)."""

    def __init__(self, params: list[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES):
        self.shapes = [p.shape for p in params]
        self.bucket_bytes = bucket_bytes
        self.calls = 0  # collective calls made, for tests and benchmarks

    def __call__(self, grads: list[GradList]) -> list[GradList]:
        if not is_distributed():
            return grads
        world = dist.get_world_size()
        present = _presence(grads)
        self.calls += 1
        out = []
        for task, mask in zip(grads, present):
            device = next((t.device for t in task if t is not None), torch.device("cpu"))
            filled = [t if t is not None or not m else torch.zeros(self.shapes[k], dtype=torch.float32, device=device)
                      for k, (t, m) in enumerate(zip(task, mask))]
            live = [t for t in filled if t is not None]
            for bucket in _buckets(live, self.bucket_bytes):
                members = [live[b] for b in bucket]
                flat = torch.cat([m.reshape(-1) for m in members])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                self.calls += 1
                flat /= world
                offset = 0
                for m in members:
                    m.copy_(flat[offset:offset + m.numel()].view_as(m))
                    offset += m.numel()
            out.append(filled)
        return out
