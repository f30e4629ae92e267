"""TOFU table on the 20-author subset (forget the last 2): forget quality, model utility and
forget ROUGE-L for the target, the retain reference, and GA, GradDiff, NPO, SimNPO after the
same fixed budget. Also times one full TOFU evaluation of the target and prints the split sizes.

    python benchmarks/tofu_methods_table.py [--job jobs/tofu_tiny.yaml] [--steps 20] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = {
    "GA": {"unlearn.forget": {"name": "ga"}, "unlearn.method": {"name": "graddiff", "gamma": 1.0, "alpha": 0.0}},
    "GradDiff": {"unlearn.forget": {"name": "ga"}, "unlearn.method": {"name": "graddiff"}},
    "NPO": {"unlearn.forget": {"name": "npo", "beta": 0.1}, "unlearn.method": {"name": "graddiff"}},
    "SimNPO": {"unlearn.forget": {"name": "simnpo", "beta": 2.5}, "unlearn.method": {"name": "graddiff", "gamma": 0.1375}},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(REPO / "jobs" / "tofu_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", help="write the rows as JSON")
    args = ap.parse_args()

    from raysweep.data.collate import QACollator
    from raysweep.distributed.single import run_trial
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import load_job_data, prepare
    from raysweep.spec import load_job

    base = {"eval.benchmarks": ["tofu"], "unlearn.steps": args.steps, "unlearn.lr": args.lr}
    job = load_job(args.job, base)
    data = load_job_data(job)
    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.target)
    evaluator = Evaluator(job, data, tok, QACollator.for_job(job, tok), prepared.retain_reference)
    evaluator.reference()  # computed (or read) before timing

    rows = []
    for label, path in (("target", prepared.target), ("retain reference", prepared.retain_reference)):
        model = load_causal_lm(path)
        t0 = time.time()
        m = evaluator(model, progress=False)
        seconds = time.time() - t0
        if label == "target":
            print(f"full TOFU evaluation of the target: {seconds:.1f}s; split sizes {evaluator.tofu_sets.sizes()}",
                  flush=True)
        rows.append((label, m))
    for label, overrides in METHODS.items():
        method_job = load_job(args.job, {**base, **overrides})
        result = run_trial(method_job, progress=False, evaluate_before=False)
        rows.append((f"{label} ({args.steps} steps, lr {args.lr:g})", result["after"]))

    # open-unlearning's extra TOFU metrics (issue 9), when the evaluation reports them.
    extra = [k for k in ("privleak", "extraction_strength", "mia_min_k_auc", "truncated_inputs") if k in rows[0][1]]
    header = (f"{'model':<32} {'forget quality':>15} {'log10 FQ':>9} {'model utility':>14} {'forget ROUGE-L':>15} "
              f"{'retain ROUGE-L':>15}" + "".join(f" {k:>20}" for k in extra))
    print(header)
    print("-" * len(header))
    for label, m in rows:
        print(f"{label:<32} {m['forget_quality']:>15.3e} {m['log10_forget_quality']:>9.2f} "
              f"{m['model_utility']:>14.4f} {m['forget_rougeL_recall']:>15.3f} {m['retain_rougeL_recall']:>15.3f}"
              + "".join(f" {m.get(k, float('nan')):>20.3f}" for k in extra))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(rows), indent=2))


if __name__ == "__main__":
    main()
