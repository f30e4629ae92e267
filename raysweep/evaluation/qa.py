"""QA metrics on a split (spec 9.1 per-question quantities), batched and rank-sharded.

* ``answer_loss``: mean over questions of the length-normalised answer loss ``ℓ̄(q, a)``;
* ``answer_prob``: mean of ``P̄(a|q) = exp(-ℓ̄(q, a))``;
* ``rougeL_recall``: ROUGE-L recall of greedy answers against the true answers (for a pair cut by
  the collator's ``max_length``, against the part of the answer that was kept);
* ``truncated_inputs``: how many (question, answer) pairs the cap cut.

Both scoring loops run through :func:`raysweep.evaluation.batching.map_batches`: length-sorted
batches (little padding), greedy generation with the KV cache from left-padded prompts, and with
several ranks each rank scores its share of the batches.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

from raysweep.data.collate import QACollator, left_pad, right_pad
from raysweep.evaluation.batching import LOCAL, Shard, evaluating, map_batches, model_context
from raysweep.evaluation.rouge import rouge_l
from raysweep.objectives.base import sequence_sums, token_logprobs


@torch.no_grad()
def normalised_answer_losses(model, collator: QACollator, questions: Sequence[str], answers: Sequence[str],
                             batch_size: int = 64, shard: Shard = LOCAL) -> torch.Tensor:
    """``ℓ̄(q, a)`` for each pair."""
    encoded = [collator.encode(q, a) for q, a in zip(questions, answers)]

    def score(batch):
        padded = {k: v.to(model.device) for k, v in collator.pad(batch).items()}
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        s, length = sequence_sums(*token_logprobs(logits, padded["labels"]))
        return (s / length).cpu().tolist()

    losses = map_batches(encoded, batch_size, score, length=lambda e: len(e[0]), shard=shard)
    return torch.tensor(losses, dtype=torch.float32)


# Min-K% Prob's k (spec 9.2): open-unlearning's mia_min_k and MUSE's PrivLeak both use 0.4.
MIN_K_FRACTION = 0.4


def min_k_of(token_logprobs: torch.Tensor, k: float) -> float:
    """Mean of the lowest ``max(1, int(k n))`` of ``n`` token log-probs (Min-K% Prob, spec 9.2)."""
    lp = token_logprobs.double().sort().values
    return float(lp[: max(1, int(lp.numel() * k))].mean())


def extraction_strength_of(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Extraction strength (open-unlearning's TOFU/MUSE metric, next to spec 9.1's): ``1 - j/n``,
    ``j`` the first index from which every prediction equals its label; ``j = n-1`` when none does
    (open-unlearning's loop ends there)."""
    n = int(labels.numel())
    wrong = (predictions != labels).nonzero(as_tuple=True)[0]
    j = 0 if wrong.numel() == 0 else min(int(wrong[-1]) + 1, n - 1)
    return 1.0 - j / n


def answer_token_scores(model, collator: QACollator, questions: Sequence[str], answers: Sequence[str],
                        k: float = MIN_K_FRACTION, batch_size: int = 64, shard: Shard = LOCAL) -> list[tuple[float, float]]:
    """Per pair (Min-K% score, extraction strength), as open-unlearning's ``mia_min_k`` and
    ``extraction_strength`` compute them (spec 9.1/9.2), see :func:`label_token_scores`; the
    answer's last label token is its EOS (a cut pair's too, :meth:`QACollator._encode`)."""
    encoded = [collator.encode(q, a) for q, a in zip(questions, answers)]
    return label_token_scores(model, encoded, collator.tok.pad_token_id, k, batch_size, shard)


@torch.no_grad()
def label_token_scores(model, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, k: float = MIN_K_FRACTION,
                       batch_size: int = 64, shard: Shard = LOCAL) -> list[tuple[float, float]]:
    """Per (ids, labels) sequence (Min-K% score, extraction strength) over its label tokens *except
    the last* (open-unlearning's ``tokenwise_logprobs``: "ignore eos prediction"; on MUSE's
    completion texts, which carry no EOS, that is the last text token, as there).

    * Min-K%: the mean of the lowest ``max(1, int(k n))`` token log-probs (higher = more member-like).
    * Extraction strength: ``1 - j/n`` with ``j`` the first position from which every greedy
      (argmax) next-token prediction equals the label; open-unlearning's loop leaves ``j = n-1``
      when no suffix matches, so such a sequence scores ``1/n`` (not 0) - kept for parity.
    """

    def score(batch):
        padded = {k_: v.to(model.device) for k_, v in right_pad(batch, pad_id).items()}
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[:, :-1].float()
        target = padded["labels"][:, 1:]
        logp = torch.log_softmax(logits, -1)
        preds = logits.argmax(-1)
        out = []
        for i in range(len(batch)):
            pos = (target[i] != -100).nonzero(as_tuple=True)[0][:-1]
            if pos.numel() == 0:
                out.append((0.0, 0.0))
                continue
            labels = target[i, pos]
            lp = logp[i, pos].gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            out.append((min_k_of(lp, k), extraction_strength_of(preds[i, pos], labels)))
        return out

    return map_batches(list(encoded), batch_size, score, length=lambda e: len(e[0]), shard=shard)


def stop_token_ids(model, tokenizer) -> Optional[list[int]]:
    """Every EOS id of the model's generation config (Llama-3 Instruct: 128001, 128008, 128009),
    as ``generate`` uses them by default in open-unlearning; the tokenizer's EOS only when the
    config names none."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return None
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt_ids: Sequence[list[int]], max_new_tokens: int,
                    batch_size: int = 64, shard: Shard = LOCAL) -> list[str]:
    """Greedy continuations of tokenised prompts, decoded without special tokens. Generation stops
    at the model's context (a tiny model's 256 positions; never binding for a real model's
    >= 2048 with 200 new tokens): positions past it were never trained."""

    def generate(batch):
        enc = {k: v.to(model.device) for k, v in left_pad(batch, tokenizer.pad_token_id).items()}
        room = min(max_new_tokens, model_context(model) - enc["input_ids"].shape[1])
        if room <= 0:
            return [""] * len(batch)
        out = model.generate(**enc, max_new_tokens=room, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer))
        return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    return map_batches(list(prompt_ids), batch_size, generate, length=len, shard=shard)


def greedy_answers(model, collator: QACollator, questions: Sequence[str], max_new_tokens: int = 64,
                   batch_size: int = 64, shard: Shard = LOCAL) -> list[str]:
    gens = greedy_generate(model, collator.tok, [collator.prompt_ids(q) for q in questions], max_new_tokens,
                           batch_size, shard)
    return [g.strip() for g in gens]


def qa_metrics(model, collator: QACollator, rows: Sequence[dict], *, max_new_tokens: int = 64,
               batch_size: int = 64, prefix: str = "", progress: bool = False, shard: Shard = LOCAL) -> dict[str, float]:
    questions = [r["question"] for r in rows]
    answers = [r["answer"] for r in rows]
    if progress:
        print(f"  evaluating {prefix.rstrip('_') or 'split'}: {len(rows)} questions", file=sys.stderr, flush=True)
    with evaluating(model):
        losses = normalised_answer_losses(model, collator, questions, answers, batch_size, shard)
        generated = greedy_answers(model, collator, questions, max_new_tokens, batch_size, shard)
    recall = [rouge_l(collator.reference_answer(q, a), g)["recall"] for q, a, g in zip(questions, answers, generated)]
    return {
        f"{prefix}answer_loss": float(losses.mean()),
        f"{prefix}answer_prob": float(torch.exp(-losses).mean()),
        f"{prefix}rougeL_recall": sum(recall) / max(1, len(recall)),
        f"{prefix}truncated_inputs": float(sum(collator.truncated(q, a) for q, a in zip(questions, answers))),
    }
