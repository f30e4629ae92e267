"""Ray Train wrapper: a ``TorchTrainer`` whose workers run ``run_worker`` under DDP (gloo on CPU,
NCCL on GPU), report metrics every step and checkpoints through ``ray.train.report``, and are
restarted from the last checkpoint by ``FailureConfig`` when one dies."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict
from typing import Optional

from raysweep.distributed.worker import WorkerOptions, run_worker
from raysweep.spec import JobSpec


def _clean(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v) if math.isfinite(float(v)) else float("nan")
        elif isinstance(v, str):
            out[k] = v
    return out


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    torch.set_num_threads(int(config.get("threads_per_worker", 1)))
    ctx = ray.train.get_context()
    job = JobSpec.model_validate(config["job"])
    options = WorkerOptions(**config["options"])
    restored = ray.train.get_checkpoint()
    scratch = tempfile.mkdtemp(prefix="raysweep-ckpt-")
    if restored is not None:  # a restart after a failure, or a restored run
        options.resume_from = restored.to_directory(os.path.join(scratch, "restored"))

    def report(metrics: dict, checkpoint_dir: Optional[str]) -> None:
        ckpt = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(_clean(metrics), checkpoint=ckpt)

    run_worker(job, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), report, options,
               os.path.join(scratch, "out"))


def build_trainer(job: JobSpec, options: WorkerOptions, *, name: str, storage_path: str,
                  callbacks: Optional[list] = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = job.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "options": asdict(options),
                           "threads_per_worker": t.threads_per_worker},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             callbacks=callbacks),
    )
