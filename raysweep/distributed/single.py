"""``raysweep run`` without Ray: the trial on this process, through the same ``run_worker`` loop
that Tune trials and Ray Train workers run, so the bare engine and the Ray path differ only in
what surrounds the loop."""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional

from raysweep.reporting import TrialReporter
from raysweep.spec import JobSpec


class HistoryReporter(TrialReporter):
    """Keeps every step's metrics; prints a progress line about ten times per run."""

    def __init__(self, steps: int, progress: bool, on_step: Optional[Callable[[int, dict], None]] = None):
        self.history: list[dict] = []
        self.points: list[dict] = []  # evaluations along the run (eval.every)
        self.steps, self.progress, self.on_step = steps, progress, on_step
        self.every = max(1, steps // 10)
        self.t0 = time.time()

    def step(self, step: int, metrics: dict) -> None:
        self.history.append(dict(metrics))
        if self.on_step:
            self.on_step(step - 1, metrics)
        if self.progress and (step % self.every == 0 or step == self.steps):
            print(f"  unlearn step {step}/{self.steps}: forget loss {metrics['loss_forget']:.3f} "
                  f"retain loss {metrics['loss_retain_0']:.3f} cos(gF,gR) {metrics['cos_forget_retain']:+.3f} "
                  f"({time.time() - self.t0:.1f}s)", file=sys.stderr, flush=True)

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        if any(k.startswith("eval/") for k in metrics):
            self.points.append({"step": int(metrics.get("step", 0)),
                                **{k[len("eval/"):]: v for k, v in metrics.items() if k.startswith("eval/")}})
        if self.progress and metrics.get("stopped"):
            print(f"  stopping at step {int(metrics['step'])}: {metrics['stopped']}", file=sys.stderr, flush=True)


def split_result(out: dict) -> dict:
    """``before/*`` and ``final/*`` of a worker's last report as the before/after tables."""
    return {"before": {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("before/")},
            "after": {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("final/")}}


def run_trial(job: JobSpec, progress: bool = True, on_step: Optional[Callable[[int, dict], None]] = None,
              evaluate_before: bool = True) -> dict:
    import torch

    from raysweep.distributed.worker import WorkerOptions, run_worker

    if "threads_per_worker" in job.train.model_fields_set:  # else torch's default: every core
        torch.set_num_threads(job.train.threads_per_worker)
    reporter = HistoryReporter(job.unlearn.steps, progress, on_step)
    options = WorkerOptions(evaluate_before=evaluate_before, save_checkpoints=False, checkpoint_every=0)
    out = run_worker(job, 0, 1, torch.device("cpu"), reporter, options, None)
    return {**split_result(out), "history": reporter.history, "trajectory": reporter.points, "seconds_unlearn": out.get("unlearn_seconds"),
            "step_seconds_median": out.get("step_seconds_median"), "stopped": out.get("stopped"),
            "startup": {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("startup/")}}


def format_table(result: dict) -> str:
    rows = [("metric", "before", "after", "change")]
    for key in result["after"]:
        b, a = result["before"].get(key, float("nan")), result["after"][key]
        rows.append((key, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
