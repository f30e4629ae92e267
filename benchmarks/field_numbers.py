"""What issue 24's cut-pair rule moves on the quickstart job: its prepared target (one fixed
checkpoint) evaluated as the job does (``qa``: answer probability, ROUGE-L recall), with pairs cut
by ``eval.max_length`` scored the old way (cut without EOS, the last kept answer token dropped by
Min-K%/ES, ROUGE against the whole answer) and open-unlearning's way (cut, EOS appended, ROUGE
against the kept answer), at the default cap (512) and at a cap that cuts (96).

    python benchmarks/field_numbers.py [--job jobs/quickstart.yaml] [--caps 512 96]

The generation stop ids do not move it (the tiny model's generation config names one EOS, the
tokenizer's); the MUSE flavours are a different benchmark (``jobs/muse_tiny.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysweep.data.collate import IGNORE_INDEX, QACollator


class OldCutRule(QACollator):
    """The rule before issue 24: ``full[:max_length]``, no EOS after the cut, the whole answer as
    the ROUGE reference."""

    def with_max_length(self, max_length: int) -> "OldCutRule":
        return OldCutRule(self.tok, max_length, self.refusals, self.seed, self.prompt)

    def _encode(self, question, answer):
        full, n_prompt = self.prompt.pair_ids(self.tok, question, answer)
        ids = full[: self.max_length]
        n_prompt = min(n_prompt, len(ids))
        return ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:], len(full) > self.max_length

    def reference_answer(self, question, answer):
        return answer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml"))
    ap.add_argument("--caps", type=int, nargs="+", default=[512, 96])
    args = ap.parse_args()

    from raysweep.models.prepare import load_job_data
    from raysweep.evaluation.qa import qa_metrics
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    job = load_job(args.job)
    data = load_job_data(job)
    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.tokenizer)
    model = load_causal_lm(prepared.target, job.model.dtype).eval()
    e = job.eval
    keys = ["forget_answer_prob", "forget_rougeL_recall", "retain_answer_prob", "retain_rougeL_recall",
            "forget_truncated_inputs", "retain_truncated_inputs"]
    print(f"quickstart target, qa benchmark, {e.max_questions} questions per split, {e.max_new_tokens} new tokens")
    print(f"{'eval.max_length':>15}  {'metric':<24} {'old':>8} {'new':>8}")
    for cap in args.caps:
        out = {}
        for name, cls in (("old", OldCutRule), ("new", QACollator)):
            collator = cls.for_job(job, tok).with_max_length(cap)
            m = {}
            for split, rows in (("forget", data.forget), ("retain", data.retain)):
                rows = rows[: e.max_questions] if e.max_questions else rows
                m.update(qa_metrics(model, collator, rows, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                    prefix=f"{split}_"))
            out[name] = m
        for k in keys:
            print(f"{cap:>15}  {k:<24} {out['old'][k]:>8.4f} {out['new'][k]:>8.4f}")


if __name__ == "__main__":
    main()
