"""How evaluation work is cut into batches and spread over data-parallel ranks.

Every model-scoring loop of the evaluation (answer losses, greedy generation, Min-K%, MCQ
log-likelihoods) goes through :func:`map_batches`: items are ordered by length (batches pad
little), cut into fixed batches of ``batch_size``, and batch ``b`` runs on rank ``b % world``;
each rank's results are gathered and put back in input order on every rank. The batches do not
depend on the number of ranks, so 2 ranks give bit-for-bit the numbers of 1 rank (padding, and
so the arithmetic, of every row is the same), in about half the time. Every scoring entry point
runs the model under :func:`evaluating`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

from raysweep.rng import rng_preserved


@dataclass(frozen=True)
class Shard:
    """This process's place among the ranks that evaluate together. ``gather(obj)`` returns
    every rank's ``obj`` in rank order (``torch.distributed.all_gather_object``)."""

    rank: int = 0
    world: int = 1
    gather: Optional[Callable[[Any], list]] = None


LOCAL = Shard()


def model_context(model) -> int:
    """The model's context length in tokens (``max_position_embeddings``; 2048 when unnamed)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


@contextmanager
def evaluating(model) -> Iterator[None]:
    """The model in eval mode for the block; after it, each module's mode and the global random
    generators are as they were, whatever the evaluation drew (a sampled generation, a random
    subsample), so evaluating along the run leaves the training steps after it unchanged."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with rng_preserved():
            yield
    finally:
        for module, training in modes:
            module.training = training


def torch_distributed_shard() -> Shard:
    """The current ``torch.distributed`` group as a shard (one local shard when not initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return LOCAL

    def gather(obj):
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    return Shard(dist.get_rank(), dist.get_world_size(), gather)


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the items in each batch: shortest first, stable for ties."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def map_batches(items: Sequence, batch_size: int, fn: Callable[[list], list], *,
                length: Optional[Callable[[Any], int]] = None, shard: Shard = LOCAL) -> list:
    """``fn(batch_of_items) -> per-item results`` over every item, in input order, on every rank."""
    if not items:
        return []
    lengths = [length(x) for x in items] if length else [0] * len(items)
    batches = plan_batches(lengths, max(1, batch_size))
    mine = [(b, fn([items[i] for i in idx])) for b, idx in enumerate(batches) if b % shard.world == shard.rank]
    if shard.world > 1:
        if shard.gather is None:
            raise ValueError("a shard of several ranks needs a gather function")
        mine = [pair for part in shard.gather(mine) for pair in part]
    out: list = [None] * len(items)
    for b, results in mine:
        if len(results) != len(batches[b]):
            raise RuntimeError(f"batch {b}: {len(results)} results for {len(batches[b])} items")
        for i, r in zip(batches[b], results):
            out[i] = r
    return out
