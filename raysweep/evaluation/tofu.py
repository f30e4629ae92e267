"""TOFU metrics (spec 9.1): probability, ROUGE-L recall, truth ratio, forget quality, model utility.

Conventions where the paper and the reference code differ (stated, as the spec asks):
* **Truth ratio** uses the *geometric* mean over perturbed answers (reference code), i.e.
  ``R = exp(ℓ̄(ã) - mean_j ℓ̄(â_j))``.
* **Rows**: every row of each split is scored (open-unlearning), not the original code's first
  300. Numbers are therefore comparable with open-unlearning's, not with the TOFU repo's.
* **Retain split** for utility: the retain rows that have paraphrased/perturbed answers
  (``retain_perturbed``; all rows of the 20-author subset).
* **Prompt**: the QA template of ``raysweep.data.collate`` (our tiny models have no chat format).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from raysweep.data.collate import QACollator
from raysweep.data.tofu import UnlearnData, load_jsonl
from raysweep.evaluation.batching import LOCAL, Shard
from raysweep.evaluation.qa import greedy_answers, normalised_answer_losses
from raysweep.evaluation.rouge import rouge_l
from raysweep.evaluation.stats import auc, harmonic_mean, ks_pvalue

UTILITY_SPLITS = ("retain", "real_authors", "world_facts")


def truth_ratio(paraphrased_loss: np.ndarray, perturbed_losses: np.ndarray) -> np.ndarray:
    """``R(q) = [Π_j P̄(â_j)]^(1/m) / P̄(ã)`` from length-normalised losses ℓ̄ (shape [n], [n, m])."""
    return np.exp(np.asarray(paraphrased_loss) - np.asarray(perturbed_losses).mean(axis=1))


def forget_truth_ratio_score(r: np.ndarray) -> float:
    """Forget-split summary: ``mean min(R, 1/R)`` (closer to 1 = right and wrong look alike)."""
    return float(np.mean(np.minimum(r, 1.0 / r)))


def utility_truth_ratio_score(r: np.ndarray) -> float:
    """Retain/real-authors/world-facts summary: ``mean max(0, 1 - R)``."""
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(model_ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """KS-test p-value between truth-ratio distributions of the model and the retain reference."""
    return ks_pvalue(model_ratios, reference_ratios)


def model_utility(numbers: dict[str, float]) -> float:
    """Harmonic mean of {prob, rougeL_recall, truth_ratio} x {retain, real_authors, world_facts}."""
    keys = [f"{s}_{m}" for s in UTILITY_SPLITS for m in ("prob", "rougeL_recall", "truth_ratio")]
    return harmonic_mean([numbers[k] for k in keys])


def _losses_by_pair(model, collator, pairs: list[tuple[str, str]], batch_size: int, shard: Shard = LOCAL) -> np.ndarray:
    if not pairs:
        return np.zeros(0)
    return normalised_answer_losses(model, collator, [q for q, _ in pairs], [a for _, a in pairs], batch_size,
                                    shard).double().numpy()


def score_split(model, collator: QACollator, rows: Sequence[dict], *, normalise_prob: bool,
                max_new_tokens: int, batch_size: int, generate: bool = True, shard: Shard = LOCAL) -> dict[str, np.ndarray]:
    """Per-question arrays for one split. ``rows`` carry ``question``, ``answer``,
    ``perturbed_answer`` (list) and, for forget/retain, ``paraphrased_answer``."""
    questions = [r["question"] for r in rows]
    m = len(rows[0]["perturbed_answer"])
    pairs = [(r["question"], r["answer"]) for r in rows]
    pairs += [(r["question"], r.get("paraphrased_answer", r["answer"])) for r in rows]
    pairs += [(r["question"], p) for r in rows for p in r["perturbed_answer"]]
    losses = _losses_by_pair(model, collator, pairs, batch_size, shard)
    n = len(rows)
    answer, para, pert = losses[:n], losses[n:2 * n], losses[2 * n:].reshape(n, m)
    if normalise_prob:  # real authors / world facts: P̄(a) / (P̄(a) + Σ_j P̄(â_j))
        pa = np.exp(-answer)
        prob = pa / (pa + np.exp(-pert).sum(axis=1))
    else:
        prob = np.exp(-answer)
    out = {"answer_loss": answer, "prob": prob, "truth_ratio": truth_ratio(para, pert)}
    if generate:
        gen = greedy_answers(model, collator, questions, max_new_tokens, batch_size, shard)
        out["rougeL_recall"] = np.array([rouge_l(r["answer"], g)["recall"] for r, g in zip(rows, gen)])
        out["generated"] = gen
    return out


def attach_perturbed(rows: Sequence[dict], perturbed: dict[str, dict]) -> list[dict]:
    return [{**r, **perturbed[r["question"]]} for r in rows if r["question"] in perturbed]


class TofuEvalSets:
    """The four evaluation splits (+ holdout) for a job's TOFU data."""

    def __init__(self, data: UnlearnData, max_rows: Optional[int] = None):
        if data.data_dir is None:
            raise ValueError("TOFU evaluation needs the data directory")
        cap = (lambda rows: rows[:max_rows]) if max_rows else (lambda rows: rows)
        forget = attach_perturbed(data.forget, data.perturbed)
        if len(forget) != len(data.forget):
            raise ValueError("some forget questions have no perturbed answers (truth ratio impossible; with "
                             "data.subset the forget authors must lie in 0-19 or 180-199)")
        self.forget = cap(forget)
        self.retain = cap(attach_perturbed(data.retain, data.perturbed))
        if not self.retain:
            raise ValueError("no retain question has perturbed answers (retain truth ratio impossible; with "
                             "data.subset some retain authors must lie in 0-19 or 180-199)")
        self.real_authors = cap(load_jsonl(Path(data.data_dir) / "real_authors_perturbed.jsonl"))
        self.world_facts = cap(load_jsonl(Path(data.data_dir) / "world_facts_perturbed.jsonl"))
        self.holdout = cap(list(data.holdout))

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("forget", "retain", "real_authors", "world_facts", "holdout")}


@torch.no_grad()
def evaluate_tofu(model, collator: QACollator, sets: TofuEvalSets, *, reference_forget_ratios=None,
                  max_new_tokens: int = 64, batch_size: int = 64, progress: bool = False,
                  shard: Shard = LOCAL) -> tuple[dict, dict]:
    """Returns (flat metrics, per-question arrays). ``reference_forget_ratios``: the retain
    reference's forget-split truth ratios; without them forget quality is absent, never made up."""
    was_training = model.training
    model.eval()
    per_q, metrics = {}, {}
    for split in ("forget", "retain", "real_authors", "world_facts"):
        rows = getattr(sets, split)
        if progress:
            import sys

            print(f"  tofu eval: {split} ({len(rows)} questions)", file=sys.stderr, flush=True)
        s = score_split(model, collator, rows, normalise_prob=split in ("real_authors", "world_facts"),
                        max_new_tokens=max_new_tokens, batch_size=batch_size, shard=shard)
        per_q[split] = s
        metrics[f"{split}_prob"] = float(np.mean(s["prob"]))
        metrics[f"{split}_rougeL_recall"] = float(np.mean(s["rougeL_recall"]))
        metrics[f"{split}_answer_loss"] = float(np.mean(s["answer_loss"]))
        tr = s["truth_ratio"]
        metrics[f"{split}_truth_ratio"] = (
            forget_truth_ratio_score(tr) if split == "forget" else utility_truth_ratio_score(tr)
        )
    metrics["model_utility"] = model_utility(metrics)
    if reference_forget_ratios is not None:
        fq = forget_quality(per_q["forget"]["truth_ratio"], reference_forget_ratios)
        metrics["forget_quality"] = fq
        metrics["log10_forget_quality"] = math.log10(max(fq, 1e-300))
    if sets.holdout:
        hold = _losses_by_pair(model, collator, [(r["question"], r["answer"]) for r in sets.holdout], batch_size, shard)
        # Loss attack: members (forget) should have lower loss than non-members (holdout).
        metrics["mia_loss_auc"] = auc(hold, per_q["forget"]["answer_loss"])
        per_q["holdout"] = {"answer_loss": hold}
    if was_training:
        model.train()
    return metrics, per_q
