"""The per-worker unlearning loop, independent of Ray (Ray Train calls it, tests call it with a
plain gloo process group). Every rank builds the same trial, draws its own slice of each global
batch, reduces each task gradient separately, synthesises identically, clips and steps."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from raysweep.distributed.checkpoint import load_checkpoint, save_checkpoint
from raysweep.distributed.collectives import TaskGradReducer, is_distributed, sum_scalars
from raysweep.engine.trial import build_trial, micro_batches
from raysweep.spec import JobSpec


@dataclass
class WorkerOptions:
    checkpoint_every: Optional[int] = None  # None: the job's train.checkpoint_every; 0: only at the end
    resume_from: Optional[str] = None   # a checkpoint directory
    stop_at_step: Optional[int] = None  # stop early (after checkpointing) - used to test resume
    fail_at_step: Optional[int] = None  # rank 1 exits hard once at this step (fault test)
    fail_marker: Optional[str] = None   # file that records the failure happened
    check_sync: bool = False            # all-gather a parameter hash after every step
    evaluate: bool = True               # final evaluation on rank 0
    sharded_scalars: bool = False       # synthesis scalars through all_reduce (FSDP-style path)
    reduce_after_synthesis: bool = False  # the wrong order, for the negative test only
    max_retain_loss: Optional[float] = None  # early stop: a retain loss above this is divergence
    mlflow_tracking_uri: Optional[str] = None  # rank 0 logs per-step metrics to this run
    mlflow_run_id: Optional[str] = None


Reporter = Callable[[dict, Optional[str]], None]  # (metrics, checkpoint dir or None)


def parameter_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for _, p in sorted(getattr(model, "module", model).state_dict().items()):
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_worker(job: JobSpec, rank: int, world: int, device: torch.device, report: Reporter,
               options: WorkerOptions, checkpoint_root: str) -> dict:
    torch.manual_seed(job.seed)

    def wrap(model):
        model.to(device)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model

    holder: dict = {}

    def reduce_grads(grads):
        return holder["reducer"](grads)

    engine_kwargs = dict(
        reduce_task_grads=reduce_grads,
        sum_across_ranks=sum_scalars,
        world_size=world,
        reduce_after_synthesis=options.reduce_after_synthesis,
    )
    if options.sharded_scalars:
        engine_kwargs["reduce_sum"] = sum_scalars
    parts = build_trial(job, model_wrapper=wrap, engine_kwargs=engine_kwargs)
    engine = parts.engine
    holder["reducer"] = TaskGradReducer(engine.params)
    start = 0
    if options.resume_from:
        start = load_checkpoint(Path(options.resume_from), engine.model, engine)
        if rank == 0:
            print(f"  resumed from step {start} ({options.resume_from})", file=sys.stderr, flush=True)

    steps = job.unlearn.steps
    every = job.train.checkpoint_every if options.checkpoint_every is None else options.checkpoint_every
    metrics: dict = {}
    tracker = None
    if rank == 0 and options.mlflow_run_id:
        from raysweep.sweep.tracking import client

        tracker = client(options.mlflow_tracking_uri)
        try:
            import ray

            if ray.is_initialized():  # where this trial's rank 0 really ran (multi-node sweeps)
                tracker.set_tag(options.mlflow_run_id, "raysweep.worker_node", ray.get_runtime_context().get_node_id())
        except Exception:  # noqa: BLE001 - tracking must never kill training
            pass
    t0 = time.time()
    for step in range(start, steps):
        if options.fail_at_step == step and rank == 1 and options.fail_marker and not os.path.exists(options.fail_marker):
            Path(options.fail_marker).write_text(f"failed at step {step}")
            os._exit(1)  # a hard crash: no cleanup, no report
        batches, probe = micro_batches(parts, step, rank, world)
        metrics = engine.step(batches, probe)
        metrics["step"] = step + 1
        metrics["start_step"] = start
        metrics["step_seconds"] = (time.time() - t0) / (step + 1 - start)
        if options.check_sync and is_distributed():
            hashes = [None] * world
            dist.all_gather_object(hashes, parameter_hash(engine.model))
            metrics["params_in_sync"] = float(len(set(hashes)) == 1)
        last = step + 1 == steps or step + 1 == options.stop_at_step
        ckpt = None
        if (every and (step + 1) % every == 0) or last:
            if rank == 0:
                ckpt = str(save_checkpoint(Path(checkpoint_root) / f"step_{step + 1:06d}", engine.model, engine))
        if metrics.get("diverged"):
            metrics["stopped"] = "diverged: non-finite loss or update"
        elif options.max_retain_loss is not None and metrics["loss_retain_0"] > options.max_retain_loss:
            metrics["stopped"] = f"diverged: retain loss {metrics['loss_retain_0']:.3g} > {options.max_retain_loss:g}"
        if tracker is not None:
            _log_step(tracker, options.mlflow_run_id, metrics, step + 1)
        if metrics.get("stopped"):
            report(metrics, ckpt)
            return metrics
        if last and options.evaluate and step + 1 == steps:
            final = parts.evaluator(parts.model, progress=False) if rank == 0 else {}
            metrics.update({f"final/{k}": v for k, v in final.items()})
        report(metrics, ckpt)
        if step + 1 == options.stop_at_step:
            break
    return metrics


def _log_step(tracker, run_id: str, metrics: dict, step: int) -> None:
    from raysweep.sweep.tracking import log_metrics

    for attempt in range(3):  # sqlite under concurrent trials can be briefly locked
        try:
            log_metrics(tracker, run_id, {f"train/{k}": v for k, v in metrics.items()}, step)
            return
        except Exception:  # noqa: BLE001 - tracking must never kill training
            time.sleep(0.5 * (attempt + 1))
