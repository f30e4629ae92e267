"""QA tokenisation: prompt and answer tokens, prompt and padding labels -100 (spec 1)."""

from __future__ import annotations

import random
from typing import Sequence

import torch

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question)


class QACollator:
    """Turns QA rows into right-padded training batches (or left-padded prompts for generation)."""

    def __init__(self, tokenizer, max_length: int = 128, refusals: Sequence[str] = (), seed: int = 0):
        self.tok = tokenizer
        self.max_length = max_length
        self.refusals = list(refusals)
        self.seed = seed
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token")
        # Rows are tokenised once per collator: every step and every evaluation reuse them.
        self._encoded: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        key = (question, answer)
        hit = self._encoded.get(key)
        if hit is None:
            if len(self._encoded) >= 200_000:
                self._encoded.clear()
            hit = self._encoded[key] = self._encode(question, answer)
        return hit

    def _encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        prompt = self.tok(format_prompt(question), add_special_tokens=False)["input_ids"]
        ans = self.tok(" " + answer, add_special_tokens=False)["input_ids"]
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        ids = (bos + prompt + ans + eos)[: self.max_length]
        n_prompt = min(len(bos) + len(prompt), len(ids))
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        return ids, labels

    def encode_text(self, text: str) -> tuple[list[int], list[int]]:
        """Raw text (WMDP/MUSE corpora): every non-pad token is a label (spec 1)."""
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        ids = (bos + self.tok(text, add_special_tokens=False)["input_ids"])[: self.max_length]
        return ids, [IGNORE_INDEX] * len(bos) + ids[len(bos):]

    def encode_row(self, row: dict) -> tuple[list[int], list[int]]:
        return self.encode_text(row["text"]) if "text" in row else self.encode(row["question"], row["answer"])

    def pad(self, seqs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in seqs)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(seqs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attn[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attn}

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
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        return bos + self.tok(format_prompt(question), add_special_tokens=False)["input_ids"]

    def prompts(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompts for batched greedy generation."""
        return left_pad([self.prompt_ids(q) for q in questions], self.tok.pad_token_id)


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding, so every row's last prompt token sits at the same position for generation."""
    width = max(len(e) for e in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(seqs):
        ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
        attn[i, width - len(e):] = 1
    return {"input_ids": ids, "attention_mask": attn}
