"""Built-in MCQ scorer vs lm-eval-harness on the same questions (issue 24).

    python benchmarks/mcq_vs_lm_eval.py [--job jobs/quickstart.yaml] [--task wmdp_bio] [--questions 200]
                                        [--batch-size 64] [--threads 1] [--repeats 3]

The quickstart target (prepared once, cached) scores the first N questions of WMDP-bio (or MMLU)
with the built-in scorer (``raysweep.evaluation.mcq``) and with lm-eval's ``simple_evaluate`` on
raysweep's local task (``HFLM`` around the same in-memory model, ``add_bos_token=False``: the BOS
rule of both). Each is timed as one evaluation along the run costs it (lm-eval: wrapper, task
build, requests, scoring; its task index built once outside, as a trial keeps it); prints both
times, their ratio, both accuracies and the largest per-choice log-likelihood difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    ap.add_argument("--task", default="wmdp_bio", choices=["wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu"])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch

    from raysweep.evaluation import mcq
    from raysweep.evaluation.batching import model_context
    from raysweep.evaluation.harness import run_lm_eval, task_manager
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import prepare
    from raysweep.spec import LmEvalSpec, load_job

    torch.set_num_threads(args.threads)
    job = load_job(args.job)
    target = prepare(job).target
    model, tok = load_causal_lm(target).eval(), load_tokenizer(target)
    root = job.eval.mcq_data or Path(job.data.path).parent
    rows = mcq.load_mcq(root, args.task)[:args.questions]
    spec = LmEvalSpec(tasks=[f"raysweep_{args.task}"], limit=args.questions)
    tm = task_manager(spec, root)
    ctx = model_context(model)

    def builtin():
        return mcq.choice_loglikelihoods(model, tok, rows, args.batch_size, max_length=ctx).numpy()

    def harness():
        out = run_lm_eval(model, tok, spec, root, batch_size=args.batch_size, add_bos=False, max_length=ctx,
                          log_samples=True, task_manager_=tm)
        samples = sorted(out["samples"][spec.tasks[0]], key=lambda s: s["doc_id"])
        return np.array([[r[0] for r in s["filtered_resps"]] for s in samples])

    times = {"builtin": [], "lm_eval": []}
    with torch.no_grad():
        builtin(), harness()  # warm-up: first forwards, lm-eval's lazy imports
        for _ in range(args.repeats):
            for name, fn in (("builtin", builtin), ("lm_eval", harness)):
                t0 = time.perf_counter()
                ll = fn()
                times[name].append(time.perf_counter() - t0)
                if name == "builtin":
                    ours = ll
                else:
                    theirs = ll
    answers = np.array([r["answer"] for r in rows])
    b, h = statistics.median(times["builtin"]), statistics.median(times["lm_eval"])
    print(f"{args.task}: {len(rows)} questions x 4 letters, tiny target ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params), batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}")
    print(f"  built-in scorer : {b:7.2f} s   acc {np.mean(ours.argmax(1) == answers):.4f}")
    print(f"  lm-eval 0.4.x   : {h:7.2f} s   acc {np.mean(theirs.argmax(1) == answers):.4f}")
    print(f"  lm-eval / built-in time: {h / b:.2f}x   max |log-likelihood difference|: {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
