"""A one-worker trial run directly inside its Ray Tune trial: the same ``run_worker`` loop and
checkpoints as a Ray Train worker, minus the Ray Train worker group.

Measured here (benchmarks/ray_overhead.py, BENCHMARKS.md): starting a one-worker ``TorchTrainer``
inside a running sweep costs about 15 s per trial and each ``ray.train.report`` about 2 s, while
``tune.report`` costs a few milliseconds and Tune reuses the trial's process for the next trial
(``reuse_actors``), so imports, parsed data and the tokenizer are paid once per process. Fault
tolerance is Tune's: ``tune.report(checkpoint=...)`` persists each checkpoint, and a trial whose
process dies is restarted from the last one (``tune.FailureConfig``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

from typing import TYPE_CHECKING

from raysweep.reporting import TrialReporter
from raysweep.spec import JobSpec

if TYPE_CHECKING:  # the worker loop (torch, transformers) loads only inside the trial
    from raysweep.distributed.worker import WorkerOptions
    from raysweep.reporting.ray_report import TuneReporter


def trial_resources(job: JobSpec) -> dict:
    """What a one-worker trial asks Tune for: its worker's CPUs (and GPU)."""
    t = job.train
    return {"cpu": t.cpus_per_worker, **({"gpu": 1} if t.use_gpu else {})}


def runs_inline(job: JobSpec) -> bool:
    return job.train.workers == 1 and job.train.inline


def local_fallbacks(restored) -> list[str]:
    """Older checkpoints of the trial (newest first) when its storage is a local or shared folder:
    what a damaged latest checkpoint falls back to."""
    from raysweep.distributed.checkpoint import on_local_disk, previous_checkpoints

    if not on_local_disk(restored):
        return []
    return [str(p) for p in previous_checkpoints(restored.path)]


def run_inline(job: JobSpec, options: "WorkerOptions", extra: Optional[TrialReporter] = None,
               tune_reporter: Optional["TuneReporter"] = None) -> tuple[dict, Optional[str]]:
    """Call from inside a Tune function trainable. Restores Tune's checkpoint when there is one.
    Returns the last report's metrics and where Tune persisted the last checkpoint."""
    import torch
    from ray import tune

    from raysweep.distributed.checkpoint import check_restored
    from raysweep.distributed.worker import run_worker
    from raysweep.reporting import FanOut, build_reporter
    from raysweep.reporting.ray_report import TuneReporter

    torch.set_num_threads(job.train.threads_per_worker)
    scratch = tempfile.mkdtemp(prefix="raysweep-ckpt-")
    restored = tune.get_checkpoint()
    if restored is not None:
        t0 = time.time()
        check_restored(restored)
        options.resume_from = restored.to_directory(os.path.join(scratch, "restored"))
        options.resume_fallbacks = local_fallbacks(restored)
        options.timings["checkpoint_fetch"] = time.time() - t0
    device = torch.device("cuda", 0) if job.train.use_gpu else torch.device("cpu")
    tune_reporter = tune_reporter or TuneReporter()
    reporter = build_reporter(options.reporting, 0, tune_reporter)
    if extra is not None:
        reporter = FanOut([reporter, extra])
    try:
        out = run_worker(job, 0, 1, device, reporter, options, os.path.join(scratch, "out"))
        return out, tune_reporter.last_checkpoint
    finally:  # tune.report has already copied every checkpoint into the trial's storage
        shutil.rmtree(scratch, ignore_errors=True)
