"""QA tokenisation: prompt and answer tokens, prompt and padding labels -100 (spec 1). How the
question is wrapped (plain ``Question: ... Answer:``, the tokenizer's chat template, Llama-2
``[INST]``) is the collator's :class:`raysweep.data.prompts.PromptFormat`."""

from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from raysweep.data.prompts import PromptFormat, job_prompt_format, resolve_prompt_format

IGNORE_INDEX = -100


class QACollator:
    """Turns QA rows into right-padded training batches (or left-padded prompts for generation)."""

    def __init__(self, tokenizer, max_length: int = 128, refusals: Sequence[str] = (), seed: int = 0,
                 prompt: Optional[PromptFormat] = None):
        self.tok = tokenizer
        self.max_length = max_length
        self.refusals = list(refusals)
        self.seed = seed
        self.prompt = prompt or resolve_prompt_format(tokenizer)
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")
        # Rows are tokenised once per collator: every step and every evaluation reuse them.
        self._encoded: dict[tuple[str, str], tuple[list[int], list[int], bool]] = {}

    @classmethod
    def for_job(cls, job, tokenizer, max_length: Optional[int] = None, **kw) -> "QACollator":
        """The job's prompt format (``model.template``) and ``data.max_length`` unless given."""
        return cls(tokenizer, max_length or job.data.max_length, prompt=job_prompt_format(job, tokenizer), **kw)

    def with_max_length(self, max_length: int) -> "QACollator":
        """The same tokenizer and prompt format with another length cap (evaluation's own)."""
        return QACollator(self.tok, max_length, self.refusals, self.seed, self.prompt)

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        return self._cached(question, answer)[:2]

    def truncated(self, question: str, answer: str) -> bool:
        """Whether the pair was longer than ``max_length`` (its answer end was cut)."""
        return self._cached(question, answer)[2]

    def _cached(self, question: str, answer: str) -> tuple[list[int], list[int], bool]:
        key = (question, answer)
        hit = self._encoded.get(key)
        if hit is None:
            if len(self._encoded) >= 200_000:
                self._encoded.clear()
            hit = self._encoded[key] = self._encode(question, answer)
        return hit

    def reference_answer(self, question: str, answer: str) -> str:
        """What a generated answer is scored against: the answer, or for a cut pair the part of
        it that survived the cap (decoded from its label tokens), as open-unlearning's
        ``eval_text_similarity`` takes its ground truth from the cut labels."""
        if not self.truncated(question, answer):
            return answer
        ids, labels = self.encode(question, answer)
        kept = [t for t in labels if t != IGNORE_INDEX]
        return self.tok.decode(kept, skip_special_tokens=True).strip()

    def _encode(self, question: str, answer: str) -> tuple[list[int], list[int], bool]:
        """open-unlearning's ``preprocess_chat_instance`` rule: a pair longer than ``max_length``
        is cut to ``max_length`` tokens and then gets its EOS back (``max_length + 1`` tokens), so
        a cut answer still ends in EOS, which the probability scores and Min-K% / extraction
        strength drop - never a real answer token."""
        full, n_prompt = self.prompt.pair_ids(self.tok, question, answer)
        cut = len(full) > self.max_length
        ids = full[: self.max_length]
        eos = getattr(self.tok, "eos_token_id", None)
        if cut and eos is not None and ids[-1] != eos:
            ids = ids + [eos]
        n_prompt = min(n_prompt, self.max_length)
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        return ids, labels, cut

    def encode_text(self, text: str) -> tuple[list[int], list[int]]:
        """Raw text (WMDP/MUSE corpora): every non-pad token is a label (spec 1)."""
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        ids = (bos + self.tok(text, add_special_tokens=False)["input_ids"])[: self.max_length]
        return ids, [IGNORE_INDEX] * len(bos) + ids[len(bos):]

    def encode_row(self, row: dict) -> tuple[list[int], list[int]]:
        return self.encode_text(row["text"]) if "text" in row else self.encode(row["question"], row["answer"])

    def pad(self, seqs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        return right_pad(seqs, self.tok.pad_token_id)

    def __call__(self, rows: Sequence[dict], indices: Sequence[int], with_idk: bool = False, epoch: int = 0):
        batch = self.pad([self.encode_row(r) for r in rows])
        batch["index"] = torch.tensor(list(indices), dtype=torch.long)
        if with_idk:
            if not self.refusals:
                raise ValueError("the idk objective needs refusal strings (idontknow.txt in the data directory)")
            # Deterministic per (seed, epoch, row): identical on every rank and after a resume.
            picks = [random.Random(hash((self.seed, epoch, int(i)))).choice(self.refusals) for i in indices]
            idk = self.pad([self.encode(r["question"], a) for r, a in zip(rows, picks)])
            batch.update({f"idk_{k}": v for k, v in idk.items()})
        return batch

    def prompt_ids(self, question: str) -> list[int]:
        """The prompt tokens a greedy answer is generated from (BOS included)."""
        return self.prompt.prompt_ids(self.tok, question)

    def prompts(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for batched greedy generation."""
        return left_pad([self.prompt_ids(q) for q in questions], self.tok.pad_token_id)


def right_pad(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """(ids, labels) pairs as one right-padded batch; padding labels -100."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attn[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attn}


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding, so every row's last prompt token sits at the same position for generation."""
    width = max(len(e) for e in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(seqs):
        ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
        attn[i, width - len(e):] = 1
    return {"input_ids": ids, "attention_mask": attn}
