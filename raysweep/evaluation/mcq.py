"""Multiple-choice accuracy (WMDP bio/cyber/chem, MMLU) as lm-eval-harness scores it: the
log-likelihood of each answer letter (" A", " B", ...) after the formatted question; the highest
wins. Zero-shot; a fixed, seeded subset of the questions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

import torch

from raysweep.data.tofu import load_jsonl
from raysweep.evaluation.batching import LOCAL, Shard, map_batches

LETTERS = ("A", "B", "C", "D")
WMDP_FILES = {"wmdp_bio": "wmdp/wmdp-bio.jsonl", "wmdp_cyber": "wmdp/wmdp-cyber.jsonl",
              "wmdp_chem": "wmdp/wmdp-chem.jsonl"}


def normalise_row(row: dict) -> dict:
    """WMDP rows have ``choices``; MMLU rows ``choice0..3`` and ``subject``."""
    choices = row.get("choices") or [row[f"choice{i}"] for i in range(4)]
    return {"question": row["question"].strip(), "choices": list(choices), "answer": int(row["answer"]),
            "subject": row.get("subject")}


def format_question(row: dict) -> str:
    head = ""
    if row.get("subject"):
        head = f"The following are multiple choice questions (with answers) about {row['subject'].replace('_', ' ')}.\n\n"
    body = "\n".join(f"{l}. {c}" for l, c in zip(LETTERS, row["choices"]))
    return f"{head}{row['question']}\n{body}\nAnswer:"


def load_mcq(data_root: Path, benchmark: str, n: Optional[int] = None, seed: int = 0) -> list[dict]:
    if benchmark in WMDP_FILES:
        rows = load_jsonl(Path(data_root) / WMDP_FILES[benchmark])
    elif benchmark == "mmlu":
        rows = load_jsonl(Path(data_root) / "mmlu" / "test.jsonl")
    else:
        raise ValueError(f"benchmark: {benchmark!r} is not allowed ({', '.join([*WMDP_FILES, 'mmlu'])})")
    rows = [normalise_row(r) for r in rows]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)  # fixed, seeded subset
    return rows


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, rows: Sequence[dict], batch_size: int = 32,
                          shard: Shard = LOCAL) -> torch.Tensor:
    """[n, 4] summed log-probs of ``" <letter>"`` given the formatted question."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    items = []
    for row in rows:
        ctx = bos + tokenizer(format_question(row), add_special_tokens=False)["input_ids"]
        for letter in LETTERS:
            items.append((ctx, tokenizer(" " + letter, add_special_tokens=False)["input_ids"]))

    def score(chunk):
        width = max(len(c) + len(a) for c, a in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, (c, a) in enumerate(chunk):
            seq = c + a
            ids[i, :len(seq)] = torch.tensor(seq)
            attn[i, :len(seq)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits.float(), -1)
        out = []
        for i, (c, a) in enumerate(chunk):
            pos = torch.arange(len(c) - 1, len(c) + len(a) - 1)
            out.append(float(logp[i, pos, torch.tensor(a)].sum()))
        return out

    scores = map_batches(items, batch_size, score, length=lambda it: len(it[0]) + len(it[1]), shard=shard)
    return torch.tensor(scores).reshape(len(rows), len(LETTERS))


def mcq_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 32, shard: Shard = LOCAL) -> float:
    model.eval()
    ll = choice_loglikelihoods(model, tokenizer, rows, batch_size, shard)
    answers = torch.tensor([r["answer"] for r in rows])
    return float((ll.argmax(-1) == answers).float().mean())
