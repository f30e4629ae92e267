"""TOFU metrics (spec 9.1): probability, ROUGE-L recall, truth ratio, forget quality, model utility.

Conventions where the paper and the reference code differ (stated, as the spec asks):
* **Truth ratio** uses the *geometric* mean over perturbed answers (reference code), i.e.
  ``R = exp(ℓ̄(ã) - mean_j ℓ̄(â_j))``.
* **Rows**: every row of each split is scored (open-unlearning), not the original code's first
  300. Numbers are therefore comparable with open-unlearning's, not with the TOFU repo's.
* **Retain split** for utility: exactly the ``retain_perturbed`` rows (400), matched by row
  (open-unlearning's ``TOFU_QA_retain_eval``); with an author subset, those of the retain authors.
* **Prompt**: the job's prompt format (``model.template``, raysweep/data/prompts.py): the
  tokenizer's chat template when it has one, plain ``Question: ... Answer:`` for the tiny models.
* **Lengths**: greedy generation up to ``eval.max_new_tokens`` (200, open-unlearning's generation
  default); every scored pair is capped at ``eval.max_length`` (512), and the pairs cut by that cap
  are counted (``truncated_inputs``) and named in a warning line, never silently dropped. A cut
  pair is scored as open-unlearning scores it: EOS appended after the cut (probability includes
  it, Min-K% / extraction strength drop it), ROUGE against the kept part of the answer.
* **Extra metrics** open-unlearning's TOFU config reports: ``privleak`` (Min-K% with K = 40% on
  forget vs holdout answers, relative to the retain reference: ``(1-AUC - (1-AUC_ref)) / (1-AUC_ref)
  x 100``; absent without a reference) and ``extraction_strength`` (mean over the forget answers),
  next to the loss-attack ``mia_loss_auc``. Both AUCs use open-unlearning's orientation: 1 = the
  forget answers look like members, 0.5 = indistinguishable from the holdout.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from raysweep.data.collate import QACollator
from raysweep.data.tofu import UnlearnData, load_jsonl
from raysweep.evaluation.batching import LOCAL, Shard, evaluating
from raysweep.evaluation.qa import MIN_K_FRACTION, answer_token_scores, greedy_answers, normalised_answer_losses
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


def tofu_privleak(mia_auc: float, reference_auc: float) -> float:
    """open-unlearning's ``privleak`` handler: its MIA AUC (1 = members) turned into MUSE's
    orientation as ``1 - x`` for the model and the retain reference, then the relative difference
    in percent (spec 9.2)."""
    score, ref = 1.0 - mia_auc, 1.0 - reference_auc
    return (score - ref) / (ref + 1e-10) * 100.0


def truncated_pairs(collator: QACollator, rows: Sequence[dict]) -> int:
    """How many scored (question, answer) pairs of ``rows`` exceed the collator's ``max_length``:
    the answer, the paraphrase and every perturbed answer of each row."""
    n = 0
    for r in rows:
        answers = [r["answer"]] + ([r["paraphrased_answer"]] if "paraphrased_answer" in r else []) + list(r.get("perturbed_answer", []))
        n += sum(collator.truncated(r["question"], a) for a in answers)
    return n


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
        out["rougeL_recall"] = np.array([rouge_l(collator.reference_answer(r["question"], r["answer"]), g)["recall"]
                                         for r, g in zip(rows, gen)])
        out["generated"] = gen
    return out


class TofuEvalSets:
    """The four evaluation splits (+ holdout) for a job's TOFU data (spec 9.1). Forget and retain rows come
    with their paraphrased/perturbed answers matched by row (``UnlearnData.forget_eval`` /
    ``retain_eval``): retain is exactly ``retain_perturbed`` (400 rows, open-unlearning's
    ``TOFU_QA_retain_eval``), not every retain question found in some perturbed file."""

    def __init__(self, data: UnlearnData, max_rows: Optional[int] = None):
        if data.data_dir is None:
            raise ValueError("TOFU evaluation needs the data directory")
        if data.forget_eval is None:
            raise ValueError("some forget questions have no perturbed answers (truth ratio impossible; with "
                             "data.subset the forget authors must lie in 0-19 or 180-199)")
        if not data.retain_eval:
            raise ValueError("no retain question has perturbed answers (retain truth ratio impossible: "
                             "retain_perturbed.jsonl is missing, or with data.subset no retain author lies in "
                             "0-19 or 180-199)")
        cap = (lambda rows: rows[:max_rows]) if max_rows else (lambda rows: rows)
        self.forget = cap(list(data.forget_eval))
        self.retain = cap(list(data.retain_eval))
        self.real_authors = cap(load_jsonl(Path(data.data_dir) / "real_authors_perturbed.jsonl"))
        self.world_facts = cap(load_jsonl(Path(data.data_dir) / "world_facts_perturbed.jsonl"))
        self.holdout = cap(list(data.holdout))

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("forget", "retain", "real_authors", "world_facts", "holdout")}


@torch.no_grad()
def evaluate_tofu(model, collator: QACollator, sets: TofuEvalSets, *, reference_forget_ratios=None,
                  reference_mia_auc: Optional[float] = None, max_new_tokens: int = 200, batch_size: int = 64,
                  progress: bool = False, shard: Shard = LOCAL) -> tuple[dict, dict]:
    """Returns (flat metrics, per-question arrays). ``reference_forget_ratios`` /
    ``reference_mia_auc``: the retain reference's forget-split truth ratios and Min-K% AUC; without
    them forget quality / privleak are absent, never made up. ``collator``: the evaluation's
    (``eval.max_length``), see :meth:`QACollator.with_max_length`."""
    with evaluating(model):
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
        forget_scores = answer_token_scores(model, collator, [r["question"] for r in sets.forget],
                                            [r["answer"] for r in sets.forget], MIN_K_FRACTION, batch_size, shard)
        metrics["extraction_strength"] = float(np.mean([es for _, es in forget_scores]))
        if sets.holdout:
            hold = _losses_by_pair(model, collator, [(r["question"], r["answer"]) for r in sets.holdout],
                                   batch_size, shard)
            # Loss attack: members (forget) should have lower loss than non-members (holdout).
            metrics["mia_loss_auc"] = auc(hold, per_q["forget"]["answer_loss"])
            hold_scores = answer_token_scores(model, collator, [r["question"] for r in sets.holdout],
                                              [r["answer"] for r in sets.holdout], MIN_K_FRACTION, batch_size, shard)
            # Min-K%: members have the higher mean of their lowest token log-probs.
            metrics["mia_min_k_auc"] = auc([m for m, _ in forget_scores], [m for m, _ in hold_scores])
            per_q["holdout"] = {"answer_loss": hold}
            if reference_mia_auc is not None:
                metrics["privleak"] = tofu_privleak(metrics["mia_min_k_auc"], reference_mia_auc)
    truncated = {split: truncated_pairs(collator, getattr(sets, split)) for split in sets.sizes()}
    metrics["truncated_inputs"] = float(sum(truncated.values()))
    if metrics["truncated_inputs"] and shard.rank == 0:
        import sys

        detail = ", ".join(f"{k} {v}" for k, v in sorted(truncated.items()) if v)
        print(f"  warning: {int(metrics['truncated_inputs'])} evaluated answers/paraphrases/perturbed answers exceed "
              f"eval.max_length={collator.max_length} tokens and were cut ({detail})", file=sys.stderr, flush=True)
    return metrics, per_q
