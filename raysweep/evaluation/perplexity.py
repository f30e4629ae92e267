"""Perplexity on held-out text (corpus unlearning): ``exp(Σ NLL / Σ tokens)`` over every label
token of the held-out chunks pooled, the usual corpus perplexity (each chunk starts with BOS and
every following token is scored)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from raysweep.evaluation.batching import LOCAL, Shard, map_batches
from raysweep.objectives.base import token_logprobs


def heldout_perplexity(model, collator, rows: Sequence[dict], batch_size: int = 16,
                       shard: Shard = LOCAL) -> tuple[float, float]:
    """(perplexity, mean token NLL) of ``rows`` (``{"text"}``); NaN for no rows."""
    encoded = [collator.encode_row(r) for r in rows]
    device = next(model.parameters()).device

    @torch.no_grad()
    def score(items):
        batch = collator.pad(items)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        logp, mask = token_logprobs(logits, batch["labels"].to(device))
        return list(zip((-logp.double().sum(-1)).tolist(), mask.sum(-1).tolist()))

    per_row = map_batches(encoded, batch_size, score, length=lambda e: len(e[0]), shard=shard)
    tokens = sum(n for _, n in per_row)
    if not tokens:
        return float("nan"), float("nan")
    loss = sum(s for s, _ in per_row) / tokens
    return math.exp(loss), loss
