"""One evaluator for the trial loop and ``raysweep eval``: a flat ``{name: float}`` per model.

Reference-model quantities (the retain reference's forget truth ratios for forget quality, its
privleak AUC) are computed once and cached next to the prepared models, keyed by everything
that changes them, so a stale value is never reused.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raysweep.data.collate import QACollator
from raysweep.data.tofu import UnlearnData
from raysweep.evaluation.batching import LOCAL, Shard, evaluating, model_context
from raysweep.models.prepare import data_fingerprint
from raysweep.spec import JobSpec, benchmark_metrics


def evaluation_key(job: JobSpec, benchmarks: list[str], data: UnlearnData, probe: str) -> str:
    """Everything that changes a cached evaluation of a fixed model (reference, target): the
    settings, the rows evaluated (``data``) and the prompt as rendered (``probe``: the evaluation's
    ``PromptFormat.probe``), so a cache made on other rows or with another prompt is never read."""
    e = job.eval
    payload = {"b": sorted(benchmarks), "max_q": e.max_questions, "len": e.max_length,
               "tokens": e.max_new_tokens, "prompt": probe, "rows": data_fingerprint(data),
               "muse": e.muse_flavour, "mcq": [e.mcq_questions, e.mcq_add_bos, e.mmlu_shots, e.mcq_seed],
               "lm_eval": e.lm_eval.model_dump(mode="json") if e.lm_eval is not None else None, "v": 4}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def during_job(job: JobSpec) -> JobSpec:
    """The job as the evaluation along the run sees it (``eval.during_benchmarks``,
    ``eval.during_max_questions``); its own cache key follows from the changed fields."""
    e = job.eval
    update = {"benchmarks": list(e.during_benchmarks or e.benchmarks),
              "max_questions": e.during_max_questions or e.max_questions,
              "mcq_questions": e.during_mcq_questions or e.mcq_questions}
    return job.model_copy(update={"eval": e.model_copy(update=update)})


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Evaluator:
    def __init__(self, job: JobSpec, data: UnlearnData, tokenizer, collator: "QACollator",
                 retain_reference: Optional[Path] = None, benchmarks: Optional[list[str]] = None):
        # Evaluation scores pairs up to its own eval.max_length, not the training data.max_length.
        self.job, self.data, self.tok = job, data, tokenizer
        self.collator = collator.with_max_length(job.eval.max_length)
        self.benchmarks = list(benchmarks or job.eval.benchmarks or [job.data.benchmark])
        self.retain_reference = Path(retain_reference) if retain_reference else None
        self._tofu_sets = None
        self._muse_sets = None
        self._mcq: dict[str, list] = {}
        self._reference: Optional[dict] = None

    # ---- lazily built evaluation sets --------------------------------------------------------
    @property
    def tofu_sets(self):
        from raysweep.evaluation.tofu import TofuEvalSets

        if self._tofu_sets is None:
            self._tofu_sets = TofuEvalSets(self.data, self.job.eval.max_questions)
        return self._tofu_sets

    @property
    def muse_sets(self):
        from raysweep.evaluation.muse import load_muse_eval

        if self._muse_sets is None:
            self._muse_sets = load_muse_eval(self.data.data_dir, self.job.eval.max_questions)
        return self._muse_sets

    @property
    def mcq_root(self) -> Path:
        """The data root of WMDP/MMLU and of raysweep's local lm-eval tasks."""
        return self.job.eval.mcq_data or Path(self.job.data.path).parent

    def mcq_rows(self, name: str) -> list:
        from raysweep.evaluation.mcq import load_mcq

        if name not in self._mcq:
            n = None if self.job.eval.mcq_questions == "all" else self.job.eval.mcq_questions
            self._mcq[name] = load_mcq(self.mcq_root, name, n, self.job.eval.mcq_seed,
                                       shots=self.job.eval.mmlu_shots if name == "mmlu" else 0)
        return self._mcq[name]

    # ---- the retain reference, cached on disk ------------------------------------------------
    def _reference_key(self) -> str:
        return evaluation_key(self.job, self.benchmarks, self.data, self.collator.prompt.probe(self.tok))

    def reference(self) -> dict:
        if self._reference is not None:
            return self._reference
        self._reference = {}
        needs = {"tofu", "muse"} & set(self.benchmarks)
        if not needs or self.retain_reference is None:
            return self._reference
        cache = self.retain_reference.parent / f"reference_eval_{self._reference_key()}.json"
        if cache.exists():
            self._reference = json.loads(cache.read_text())
            return self._reference
        from raysweep.models.build import load_causal_lm

        _log(f"  evaluating the retain reference once (cached in {cache.name})")
        ref_model = load_causal_lm(self.retain_reference, self.job.model.dtype)
        if "tofu" in needs:
            from raysweep.evaluation.tofu import evaluate_tofu

            m, per_q = evaluate_tofu(ref_model, self.collator, self.tofu_sets, max_new_tokens=self.job.eval.max_new_tokens,
                                     batch_size=self.job.eval.batch_size)
            self._reference["tofu_forget_truth_ratios"] = per_q["forget"]["truth_ratio"].tolist()
            if "mia_min_k_auc" in m:
                self._reference["tofu_mia_min_k_auc"] = m["mia_min_k_auc"]
        if "muse" in needs:
            from raysweep.evaluation.muse import privleak_auc

            self._reference["muse_privleak_auc"] = privleak_auc(ref_model, self.tok, self.muse_sets)
        cache.write_text(json.dumps(self._reference))
        return self._reference

    # ---- evaluate one model ------------------------------------------------------------------
    def __call__(self, model, progress: bool = True, shard: Shard = LOCAL) -> dict[str, float]:
        """Every benchmark's metrics; with several ranks each scores its share (same numbers)."""
        with evaluating(model):
            return self._scores(model, progress, shard)

    def _scores(self, model, progress: bool, shard: Shard) -> dict[str, float]:
        out: dict[str, float] = {}
        e = self.job.eval
        for bench in self.benchmarks:
            t0 = time.time()
            if bench == "qa":
                from raysweep.evaluation.qa import qa_metrics

                for split, rows in (("forget", self.data.forget), ("retain", self.data.retain)):
                    rows = rows[: e.max_questions] if e.max_questions else rows
                    out.update(qa_metrics(model, self.collator, rows, max_new_tokens=e.max_new_tokens,
                                          batch_size=e.batch_size, prefix=f"{split}_", shard=shard))
            elif bench == "tofu":
                from raysweep.evaluation.tofu import evaluate_tofu

                ref = self.reference()
                metrics, _ = evaluate_tofu(model, self.collator, self.tofu_sets,
                                           reference_forget_ratios=ref.get("tofu_forget_truth_ratios"),
                                           reference_mia_auc=ref.get("tofu_mia_min_k_auc"),
                                           max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, progress=progress,
                                           shard=shard)
                if "privleak" not in metrics and progress and shard.rank == 0:
                    _log("  tofu privleak: not reported (it needs the retain reference, prepare.retain_reference: true)")
                out.update(metrics)
            elif bench == "muse":
                from raysweep.evaluation.muse import evaluate_muse

                ref_auc = self.reference().get("muse_privleak_auc")
                out.update(evaluate_muse(model, self.tok, self.muse_sets, auc_reference=ref_auc, shard=shard,
                                         flavour=e.muse_flavour))
                if ref_auc is None and progress and shard.rank == 0:
                    _log("  muse privleak: no retain reference - reported as muse_privleak_published_ref, relative "
                         "to the benchmark's published AUC_retrain (0.4772), not as muse_privleak")
            elif bench == "corpus":
                from raysweep.evaluation.perplexity import heldout_perplexity

                for split in ("forget", "retain"):
                    rows = self.data.heldout.get(split, [])
                    rows = rows[: e.max_questions] if e.max_questions else rows
                    ppl, loss = heldout_perplexity(model, self.collator, rows, e.batch_size, shard)
                    out[f"{split}_heldout_ppl"], out[f"{split}_heldout_loss"] = ppl, loss
            elif bench == "lm_eval":
                from raysweep.evaluation.harness import evaluate_lm_eval

                # Every rank runs every task (the same forwards on each: FSDP needs all ranks in each).
                out.update(evaluate_lm_eval(model, self.tok, e.lm_eval, self.mcq_root, batch_size=e.batch_size,
                                            add_bos=e.mcq_add_bos, max_length=model_context(model)))
            else:
                from raysweep.evaluation.mcq import mcq_accuracy

                out[benchmark_metrics(bench, e)[0]] = mcq_accuracy(
                    model, self.tok, self.mcq_rows(bench), e.batch_size, shard, max_length=model_context(model),
                    add_bos=e.mcq_add_bos)
            if progress and shard.rank == 0:
                _log(f"  evaluated {bench} in {time.time() - t0:.1f}s")
        return out
