"""QA metrics on a split (spec 9.1 per-question quantities), batched.

* ``answer_loss``: mean over questions of the length-normalised answer loss ``ℓ̄(q, a)``;
* ``answer_prob``: mean of ``P̄(a|q) = exp(-ℓ̄(q, a))``;
* ``rougeL_recall``: ROUGE-L recall of greedy answers against the true answers.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from raysweep.data.collate import QACollator
from raysweep.evaluation.rouge import rouge_l
from raysweep.objectives.base import sequence_sums, token_logprobs


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def normalised_answer_losses(model, collator: QACollator, questions: Sequence[str], answers: Sequence[str],
                             batch_size: int = 64) -> torch.Tensor:
    """``ℓ̄(q, a)`` for each pair."""
    out = []
    for idx in _batches(len(questions), batch_size):
        batch = collator.pad([collator.encode(questions[i], answers[i]) for i in idx])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s, length = sequence_sums(*token_logprobs(logits, batch["labels"]))
        out.append((s / length).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def greedy_answers(model, collator: QACollator, questions: Sequence[str], max_new_tokens: int = 64,
                   batch_size: int = 64) -> list[str]:
    tok = collator.tok
    answers: list[str] = []
    for idx in _batches(len(questions), batch_size):
        batch = collator.prompts([questions[i] for i in idx])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        gen = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = gen[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return answers


def qa_metrics(model, collator: QACollator, rows: Sequence[dict], *, max_new_tokens: int = 64,
               batch_size: int = 64, prefix: str = "", progress: bool = False) -> dict[str, float]:
    was_training = model.training
    model.eval()
    questions = [r["question"] for r in rows]
    answers = [r["answer"] for r in rows]
    if progress:
        print(f"  evaluating {prefix.rstrip('_') or 'split'}: {len(rows)} questions", file=sys.stderr, flush=True)
    losses = normalised_answer_losses(model, collator, questions, answers, batch_size)
    generated = greedy_answers(model, collator, questions, max_new_tokens, batch_size)
    recall = [rouge_l(a, g)["recall"] for a, g in zip(answers, generated)]
    if was_training:
        model.train()
    return {
        f"{prefix}answer_loss": float(losses.mean()),
        f"{prefix}answer_prob": float(torch.exp(-losses).mean()),
        f"{prefix}rougeL_recall": sum(recall) / max(1, len(recall)),
    }
