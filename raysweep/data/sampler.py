"""Seeded paired forget/retain sampling, distinct per data-parallel rank.

Each stream (forget, retain) is an endless concatenation of epoch permutations, each drawn from
its own generator seeded by ``(seed, stream, epoch)`` - never a shared global RNG. Global step
``s`` takes positions ``[s·B, (s+1)·B)`` of each stream, and rank ``r`` of ``W`` takes the
``r``-th slice of ``B/W``. So the global batch is the job's batch size for any worker count,
ranks never share samples within an epoch, and the position is a pure function of the step
(resuming needs nothing but the step).
"""

from __future__ import annotations

from functools import lru_cache

import torch

_STREAM_IDS = {"forget": 0, "retain": 1}


@lru_cache(maxsize=64)
def _epoch_permutation(n: int, seed: int, stream: int, epoch: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(hash((seed, stream, epoch)) & 0x7FFFFFFFFFFFFFFF)
    return tuple(torch.randperm(n, generator=gen).tolist())


def stream_indices(n: int, start: int, count: int, seed: int, stream: str) -> list[tuple[int, int]]:
    """``count`` (epoch, index) pairs from position ``start`` of a stream over ``n`` rows."""
    out = []
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, n)
        out.append((epoch, _epoch_permutation(n, seed, _STREAM_IDS[stream], epoch)[offset]))
    return out


class PairedSampler:
    def __init__(self, n_forget: int, n_retain: int, batch_size: int, seed: int = 0):
        if n_forget <= 0 or n_retain <= 0:
            raise ValueError("both the forget and the retain split must be non-empty")
        self.n = {"forget": n_forget, "retain": n_retain}
        self.batch_size = batch_size
        self.seed = seed

    def per_rank(self, world_size: int) -> int:
        if self.batch_size % world_size:
            raise ValueError(
                f"unlearn.batch_size: {self.batch_size} is not divisible by workers={world_size}"
            )
        return self.batch_size // world_size

    def batch(self, step: int, stream: str, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        """(epoch, row index) pairs for this rank's share of global step ``step``."""
        b = self.per_rank(world_size)
        start = step * self.batch_size + rank * b
        return stream_indices(self.n[stream], start, b, self.seed, stream)

    def steps_per_epoch(self) -> int:
        return max(1, self.n["forget"] // self.batch_size)
