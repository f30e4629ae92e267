"""Per-step time of data-parallel unlearning, as ratios measured in one run:
2 workers vs 1 worker (same global batch), and every synthesis method vs GradDiff at 2 workers.

    python benchmarks/dp_step_time.py [--job jobs/tofu_tiny.yaml] [--steps 12] [--warmup 2]

Workers are local processes joined by gloo, running the same loop as Ray Train's workers; each
uses 1 thread, so 2 workers use both cores of this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ["graddiff", "sago", "sago_prefer_retain", "pcgrad_r", "ngdiff", "gru", "mgda"]


def worker(rank, world, job_path, overrides, warmup):
    import torch

    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.reporting import TrialReporter
    from raysweep.spec import load_job

    job = load_job(job_path, overrides)
    times = []

    class StepTimes(TrialReporter):
        def step(self, step, metrics):
            times.append(metrics["step_seconds"])

    run_worker(job, rank, world, torch.device("cpu"), StepTimes(), WorkerOptions(evaluate=False),
               tempfile.mkdtemp())
    return times[warmup:]


def measure(job_path, world, method, steps, warmup, threads=1):
    from raysweep.distributed.local import run_ranks

    overrides = {"unlearn.steps": steps, "unlearn.method": {"name": method}, "unlearn.batch_size": 8}
    per_rank = run_ranks(worker, world, job_path, overrides, warmup, threads=threads)
    return statistics.median(per_rank[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(REPO / "jobs" / "tofu_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    prepare(load_job(args.job))
    one = measure(args.job, 1, "graddiff", args.steps, args.warmup)
    one_2t = measure(args.job, 1, "graddiff", args.steps, args.warmup, threads=2)
    two = {m: measure(args.job, 2, m, args.steps, args.warmup) for m in METHODS}
    print(f"median step time, global batch 8, {args.steps - args.warmup} timed steps")
    print(f"  1 worker x 1 thread  graddiff: {one * 1000:7.1f} ms")
    print(f"  1 worker x 2 threads graddiff: {one_2t * 1000:7.1f} ms")
    print(f"  2 workers x 1 thread graddiff: {two['graddiff'] * 1000:7.1f} ms")
    print(f"ratio 2 workers / 1 worker (1 thread each): {two['graddiff'] / one:.2f}")
    print(f"ratio 2 workers / 1 worker with 2 threads:  {two['graddiff'] / one_2t:.2f}")
    print("ratio method / graddiff at 2 workers:")
    for m in METHODS:
        print(f"  {m:<20} {two[m] / two['graddiff']:.2f}")


if __name__ == "__main__":
    main()
