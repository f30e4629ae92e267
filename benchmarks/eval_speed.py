"""Evaluation speed: batched vs one-at-a-time, on the TOFU rows of the quickstart target (issue 8).

    python benchmarks/eval_speed.py [--job jobs/quickstart.yaml] [--questions 120] [--tokens 48]
                                    [--batch-size 64] [--threads 1]

Greedy generation (KV cache, left padding, length-sorted batches) and the loss-based metric
(length-normalised answer loss) over the forget and retain questions, each measured batched and
with batch size 1 in the same process; prints the speed-ups and whether both give the same
answers (greedy decoding in fp32: they should, bit for bit or nearly).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--questions", type=int, default=120, help="questions per split (forget, retain)")
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens (the quickstart's eval.max_new_tokens)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from raysweep.data.collate import QACollator
    from raysweep.evaluation.qa import greedy_answers, normalised_answer_losses
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import load_job_data, prepare
    from raysweep.spec import load_job

    torch.set_num_threads(args.threads)
    job = load_job(args.job)
    data = load_job_data(job)
    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.tokenizer)
    model = load_causal_lm(prepared.target).eval()
    collator = QACollator.for_job(job, tok)
    rows = data.forget[: args.questions] + data.retain[: args.questions]
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    with torch.no_grad():
        # Warm-up, which also fills the collator's encode cache so both timings are model time only.
        greedy_answers(model, collator, questions[:4], args.tokens, args.batch_size)
        normalised_answer_losses(model, collator, questions, answers, args.batch_size)
        gen_b, batched = timed(lambda: greedy_answers(model, collator, questions, args.tokens, args.batch_size))
        gen_1, single = timed(lambda: greedy_answers(model, collator, questions, args.tokens, 1))
        loss_b, lb = timed(lambda: normalised_answer_losses(model, collator, questions, answers, args.batch_size))
        loss_1, l1 = timed(lambda: normalised_answer_losses(model, collator, questions, answers, 1))
    same = sum(a == b for a, b in zip(batched, single))
    print(f"quickstart target, {len(rows)} TOFU questions (forget + retain), {args.tokens} new tokens, "
          f"torch threads {args.threads}, {os.cpu_count()} cores")
    print(f"greedy generation: batch {args.batch_size} {gen_b:.2f} s vs batch 1 {gen_1:.2f} s: "
          f"speed-up {gen_1 / gen_b:.1f}x; identical answers {same}/{len(rows)}")
    print(f"answer losses:     batch {args.batch_size} {loss_b:.2f} s vs batch 1 {loss_1:.2f} s: "
          f"speed-up {loss_1 / loss_b:.1f}x; max |difference| {float((lb - l1).abs().max()):.2e}")


if __name__ == "__main__":
    main()
