"""Ray Train wrapper for trials of several workers: a ``TorchTrainer`` whose workers run
``run_worker`` under DDP (gloo on CPU, NCCL on GPU), report to Ray only at checkpoints and at
the end (``ray.train.report`` costs about 2 s in Ray 2.60), and are restarted from the last
checkpoint by ``FailureConfig`` when one dies. One-worker trials skip all this and run inline
(:mod:`raysweep.distributed.inline`)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Optional

from raysweep.distributed.inline import local_fallbacks
from raysweep.distributed.worker import WorkerOptions, run_worker
from raysweep.spec import JobSpec


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from raysweep.distributed.checkpoint import check_restored
    from raysweep.reporting import build_reporter
    from raysweep.reporting.ray_report import TrainReporter

    entered = time.time()
    torch.set_num_threads(int(config.get("threads_per_worker", 1)))
    ctx = ray.train.get_context()
    job = JobSpec.model_validate(config["job"])
    options = WorkerOptions.from_dict(config["options"])
    if config.get("fit_started"):  # from trainer.fit() to this worker's loop: the worker group's start
        options.timings["worker_group_start"] = entered - float(config["fit_started"])
    restored = ray.train.get_checkpoint()
    scratch = tempfile.mkdtemp(prefix="raysweep-ckpt-")
    if restored is not None:  # a restart after a failure, or a restored run
        check_restored(restored)
        options.resume_from = restored.to_directory(os.path.join(scratch, "restored"))
        options.resume_fallbacks = local_fallbacks(restored)
    rank = ctx.get_world_rank()
    reporter = build_reporter(options.reporting, rank, TrainReporter())
    run_worker(job, rank, ctx.get_world_size(), ray.train.torch.get_device(), reporter, options,
               os.path.join(scratch, "out"))


def build_trainer(job: JobSpec, options: WorkerOptions, *, name: str, storage_path: str,
                  callbacks: Optional[list] = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = job.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "options": options.to_dict(),
                           "threads_per_worker": t.threads_per_worker, "fit_started": time.time()},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 # every evaluated checkpoint is a front candidate (eval.every)
                                 num_to_keep=None if job.eval.every else t.keep_checkpoints),
                             callbacks=callbacks),
    )
