"""MUSE-News metrics (spec 9.2) on what ``shared/data/muse_news`` holds, in two flavours
(``eval.muse_flavour``); the ROUGE metrics' names say which (``MUSE_FLAVOUR_SUFFIX``).

* KnowMem: few-shot ``"Question: q\\nAnswer: a\\n\\n"`` prompts, greedy 32 tokens, truncated at
  ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``, ROUGE-L F1 against the answer.
* VerbMem: the forget-text prefix, greedy 128 tokens, ROUGE-L F1 against the true continuation.
* ``open-unlearning`` (default; ``muse_knowmem_forget_ou``, ``muse_knowmem_retain_ou``,
  ``muse_verbmem_forget_ou``): ``rouge_score`` *with* stemming, the mean on a 0-1 scale; VerbMem's
  reference is the whole ground truth (its tokens after the prefix in ``prefix + " " + gt``, up to
  2048: ``MUSE_forget_verbmem``'s ``CompletionDataset``).
* ``muse`` (``swj0419/muse_bench``; ``muse_knowmem_forget``, ...): no stemming, the mean x 100;
  VerbMem's reference is ``tokenizer(gt)`` with its BOS cut to 128 tokens (so 127 text tokens).
* Extraction strength (``muse_extraction_strength``, open-unlearning's default MUSE metric; both
  flavours): over VerbMem's forget rows, prefix + ground truth as one sequence, the ground-truth
  tokens as labels, all but the last (``tokenwise_vocab_logprobs``).
* PrivLeak: Min-K% Prob (K = 40%) per text, each text scored up to 2048 tokens (open-unlearning's
  ``MUSE_MIA`` max_length; less only where the model's context is shorter);
  ``AUC = P(score(holdout) > score(forget))``; ``muse_privleak = (AUC - AUC_ref) / AUC_ref x 100``
  with ``AUC_ref`` the job's own retain reference evaluated the same way. Without a reference there
  is no ``muse_privleak``: the value relative to the benchmark's published ``AUC_retrain = 0.4772``
  (News, a 7B retrain model) is reported under its own name, ``muse_privleak_published_ref``.
* Prompts (KnowMem, VerbMem) are cut on the left only when prompt + new tokens would not fit the
  model's context; a long VerbMem prefix is kept whole otherwise. Likewise extraction strength
  cuts the prefix's start (never the ground truth's) only to fit the model's context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from raysweep.data.collate import IGNORE_INDEX
from raysweep.data.tofu import load_jsonl
from raysweep.evaluation.batching import LOCAL, Shard, map_batches, model_context
from raysweep.evaluation.qa import MIN_K_FRACTION, greedy_generate, label_token_scores
from raysweep.evaluation.rouge import rouge_l
from raysweep.evaluation.stats import auc
from raysweep.objectives.base import token_logprobs
from raysweep.spec import MUSE_FLAVOUR_SUFFIX

AUC_RETRAIN_NEWS = 0.4772
STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_MAX_TOKENS = 2048
# open-unlearning's MUSE_forget_verbmem max_length: ground-truth tokens kept after the prefix.
VERBMEM_GT_MAX_TOKENS = 2048
OPEN_UNLEARNING = "open-unlearning"


def knowmem_prompt(icl: Sequence[dict], question: str) -> str:
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    return shots + f"Question: {question}\nAnswer: "


def truncate_at_stops(text: str) -> str:
    cut = len(text)
    for s in STOP_STRINGS:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


def greedy_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                         max_prompt_tokens: Optional[int] = None, shard: Shard = LOCAL) -> list[str]:
    enc = prompt_token_ids(model, tokenizer, prompts, max_new_tokens, max_prompt_tokens)
    return greedy_generate(model, tokenizer, enc, max_new_tokens, batch_size, shard)


def prompt_token_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                     max_prompt_tokens: Optional[int] = None) -> list[list[int]]:
    """BOS + each prompt's tokens; the prompt's end (the question) is kept, and its start cut, only
    when prompt + ``max_new_tokens`` would not fit the model's context."""
    room = model_context(model) - max_new_tokens - 1
    max_prompt_tokens = room if max_prompt_tokens is None else min(max_prompt_tokens, room)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] for p in prompts]


def rouge_f1(reference: str, prediction: str, flavour: str) -> float:
    """One KnowMem/VerbMem score: ROUGE-L F1, stemmed on open-unlearning's 0-1 scale, or
    unstemmed x 100 as muse_bench reports it."""
    f1 = rouge_l(reference, prediction, stem=flavour == OPEN_UNLEARNING)["f1"]
    return f1 if flavour == OPEN_UNLEARNING else 100.0 * f1


def knowmem(model, tokenizer, qa: Sequence[dict], icl: Sequence[dict], max_new_tokens: int = 32,
            batch_size: int = 16, shard: Shard = LOCAL, flavour: str = OPEN_UNLEARNING) -> float:
    prompts = [knowmem_prompt(icl, r["question"]) for r in qa]
    gens = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, shard=shard)
    return float(np.mean([rouge_f1(r["answer"], truncate_at_stops(g), flavour) for r, g in zip(qa, gens)]))


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def verbmem_ids(tokenizer, prompt: str, gt: str) -> tuple[list[int], list[int]]:
    """(prefix ids, ground-truth ids) as open-unlearning's ``preprocess_pretraining_instance``
    (``insert_space``) makes them: ``prefix + " " + gt`` tokenised whole, the ground truth being
    its tokens after the prefix's own length, up to 2048."""
    prefix = _bos(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = _bos(tokenizer) + tokenizer(prompt + " " + gt, add_special_tokens=False)["input_ids"]
    return prefix, full[len(prefix):len(prefix) + VERBMEM_GT_MAX_TOKENS]


def verbmem_reference(tokenizer, row: dict, max_new_tokens: int, flavour: str) -> str:
    """What a VerbMem continuation is scored against (see the module's docstring)."""
    if flavour == OPEN_UNLEARNING:
        ids = verbmem_ids(tokenizer, row["prompt"], row["gt"])[1]
    else:
        ids = (_bos(tokenizer) + tokenizer(row["gt"], add_special_tokens=False)["input_ids"])[:max_new_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def verbmem(model, tokenizer, rows: Sequence[dict], max_new_tokens: int = 128, batch_size: int = 16,
            shard: Shard = LOCAL, flavour: str = OPEN_UNLEARNING) -> float:
    gens = greedy_continuations(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, batch_size, shard=shard)
    return float(np.mean([rouge_f1(verbmem_reference(tokenizer, r, max_new_tokens, flavour), g.strip(), flavour)
                          for r, g in zip(rows, gens)]))


def verbmem_extraction_strength(model, tokenizer, rows: Sequence[dict], batch_size: int = 8,
                                shard: Shard = LOCAL) -> float:
    """open-unlearning's MUSE ``extraction_strength``: the mean over VerbMem's forget rows."""
    context = model_context(model)
    encoded = []
    for r in rows:
        prefix, gt = verbmem_ids(tokenizer, r["prompt"], r["gt"])
        gt = gt[:context - len(_bos(tokenizer)) - 1]  # at least one prefix token predicts the first
        head, body = prefix[:len(_bos(tokenizer))], prefix[len(_bos(tokenizer)):]
        prefix = head + body[max(0, len(head) + len(body) + len(gt) - context):]
        encoded.append((prefix + gt, [IGNORE_INDEX] * len(prefix) + gt))
    scores = label_token_scores(model, encoded, tokenizer.pad_token_id, batch_size=batch_size, shard=shard)
    return float(np.mean([es for _, es in scores]))


@torch.no_grad()
def min_k_scores(model, tokenizer, texts: Sequence[str], k: float = MIN_K_FRACTION, max_length: int = PRIVLEAK_MAX_TOKENS,
                 batch_size: int = 8, shard: Shard = LOCAL) -> np.ndarray:
    """Mean of the lowest ``k`` fraction of token log-probs, per text (higher = more member-like)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    max_length = min(max_length, model_context(model))
    enc = [(bos + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_length] for t in texts]

    def score(batch):
        width = max(len(e) for e in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        attn = torch.zeros_like(ids)
        for i, e in enumerate(batch):
            ids[i, :len(e)] = torch.tensor(e)
            labels[i, :len(e)] = torch.tensor(e)
            attn[i, :len(e)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits
        logp, mask = token_logprobs(logits, labels.to(model.device))
        out = []
        for row, m in zip(logp.cpu(), mask.cpu()):
            vals = np.sort(row[m].numpy())
            n = max(1, int(len(vals) * k))
            out.append(float(vals[:n].mean()))
        return out

    return np.asarray(map_batches(enc, batch_size, score, length=len, shard=shard))


def privleak(auc_value: float, auc_reference: float = AUC_RETRAIN_NEWS) -> float:
    return (auc_value - auc_reference) / auc_reference * 100.0


def load_muse_eval(data_dir: Path, max_rows: Optional[int] = None) -> dict[str, list[dict]]:
    cap = (lambda r: r[:max_rows]) if max_rows else (lambda r: r)
    names = ["knowmem_forget_qa", "knowmem_forget_qa_icl", "knowmem_retain2_qa", "knowmem_retain2_qa_icl",
             "verbmem_forget", "privleak_forget", "privleak_holdout"]
    return {n: (load_jsonl(Path(data_dir) / f"{n}.jsonl") if n.endswith("icl") else cap(load_jsonl(Path(data_dir) / f"{n}.jsonl")))
            for n in names}


def privleak_auc(model, tokenizer, sets: dict[str, list[dict]], shard: Shard = LOCAL) -> float:
    """Min-K% AUC of forget vs holdout texts: all a retain reference is evaluated for (no generation)."""
    model.eval()
    forget = min_k_scores(model, tokenizer, [r["text"] for r in sets["privleak_forget"]], shard=shard)
    holdout = min_k_scores(model, tokenizer, [r["text"] for r in sets["privleak_holdout"]], shard=shard)
    return auc(holdout, forget)


def evaluate_muse(model, tokenizer, sets: dict[str, list[dict]], auc_reference: Optional[float] = None,
                  batch_size: int = 16, verbmem_tokens: int = 128, knowmem_tokens: int = 32,
                  shard: Shard = LOCAL, flavour: str = OPEN_UNLEARNING) -> dict[str, float]:
    model.eval()
    a = privleak_auc(model, tokenizer, sets, shard)
    named = MUSE_FLAVOUR_SUFFIX[flavour]
    return {
        f"muse_knowmem_forget{named}": knowmem(model, tokenizer, sets["knowmem_forget_qa"], sets["knowmem_forget_qa_icl"],
                                               knowmem_tokens, batch_size, shard, flavour),
        f"muse_knowmem_retain{named}": knowmem(model, tokenizer, sets["knowmem_retain2_qa"], sets["knowmem_retain2_qa_icl"],
                                               knowmem_tokens, batch_size, shard, flavour),
        f"muse_verbmem_forget{named}": verbmem(model, tokenizer, sets["verbmem_forget"], verbmem_tokens, batch_size, shard,
                                               flavour),
        # open-unlearning's extraction_strength config: batch 8 (long texts, full-vocabulary logits).
        "muse_extraction_strength": verbmem_extraction_strength(model, tokenizer, sets["verbmem_forget"],
                                                                min(batch_size, 8), shard),
        "muse_privleak_auc": a,
        **({"muse_privleak": privleak(a, auc_reference)} if auc_reference is not None
           else {"muse_privleak_published_ref": privleak(a, AUC_RETRAIN_NEWS)}),
    }
