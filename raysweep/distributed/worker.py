"""The per-worker unlearning loop, independent of Ray. The bare engine (``raysweep run``), a
one-worker trial inside a Tune trial and every rank of a Ray Train run all call ``run_worker``.

Every rank builds the same trial, draws its own slice of each global batch, reduces each task
gradient separately, synthesises identically, clips and steps. What the loop tells the world goes
through one :class:`~raysweep.reporting.TrialReporter`: ``step`` after every optimizer step
(buffered sinks: MLflow, progress), ``report`` only when it matters (a checkpoint, the final
evaluation, an early stop), so a Ray round trip is never paid per step.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from raysweep.distributed.checkpoint import load_checkpoint, load_first_good, save_checkpoint
from raysweep.distributed.collectives import TaskGradReducer, is_distributed, sum_scalars
from raysweep.engine.trial import build_trial, micro_batches
from raysweep.evaluation.batching import LOCAL, Shard, torch_distributed_shard
from raysweep.reporting import SinkFactory, TrialReporter, as_reporter
from raysweep.spec import JobSpec

# Steps excluded from the steady-state step time (allocator warm-up, first-touch of caches).
WARMUP_STEPS = 2


@dataclass
class WorkerOptions:
    checkpoint_every: Optional[int] = None  # None: the job's train.checkpoint_every; 0: only at the end
    resume_from: Optional[str] = None   # a checkpoint directory
    resume_fallbacks: list = field(default_factory=list)  # older checkpoints, newest first, if it is damaged
    stop_at_step: Optional[int] = None  # stop early (after checkpointing) - used to test resume
    fail_at_step: Optional[int] = None  # rank 1 (rank 0 when alone) exits hard once at this step (fault test)
    fail_marker: Optional[str] = None   # file that records the failure happened
    # Seconds the failing rank waits before it dies, so that a fault test can make Ray Train's
    # controller (it polls workers every 2 s) collect the checkpoint reported just before.
    fail_delay_s: float = 0.0
    check_sync: bool = False            # all-gather a parameter hash after every step
    evaluate: bool = True               # final evaluation, split across the ranks
    evaluate_before: bool = False       # also evaluate the starting model (``raysweep run``)
    save_checkpoints: bool = True       # False: the bare engine's one-off run keeps no checkpoint
    reduce_after_synthesis: bool = False  # the wrong order, for the negative test only
    max_retain_loss: Optional[float] = None  # early stop: a retain loss above this is divergence
    reporting: Optional[SinkFactory] = None  # the trial runtime's sinks per rank (a sweep: MLflow, progress)
    timings: dict = field(default_factory=dict)  # start-up seconds measured before the loop (Tune, Train)

    @classmethod
    def from_dict(cls, raw: dict) -> "WorkerOptions":
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def to_dict(self) -> dict:
        # Shallow: ``reporting`` stays the runtime's object (Ray pickles it by its class).
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parameter_hash(model: torch.nn.Module) -> str:
    """Hash of the whole model; a sharded (DTensor) entry is gathered first, so under FSDP this is
    a collective that every rank must call."""
    h = hashlib.sha256()
    for _, p in sorted(getattr(model, "module", model).state_dict().items()):
        if hasattr(p, "full_tensor"):
            p = p.full_tensor()
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def stop_reason(metrics: dict, max_retain_loss: Optional[float]) -> Optional[str]:
    """Why the trial must stop now, or None. Losses are global, so every rank agrees."""
    if metrics.get("diverged"):
        return "diverged: non-finite loss or update"
    if max_retain_loss is not None and metrics["loss_retain_0"] > max_retain_loss:
        return f"diverged: retain loss {metrics['loss_retain_0']:.3g} > {max_retain_loss:g}"
    return None


def _evaluation_shard(job: JobSpec) -> Shard:
    """How the ranks split an evaluation's rows. FSDP: every forward all-gathers, so all ranks
    must run the same forwards in the same order: no split."""
    return LOCAL if job.train.strategy == "fsdp" else torch_distributed_shard()


def _evaluate(parts, prefix: str) -> dict:
    metrics = parts.evaluator(parts.model, progress=False, shard=_evaluation_shard(parts.job))
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _evaluate_during(parts, final: Optional[dict] = None) -> dict:
    """``eval/*``: one point of the trajectory (``eval.every``). At the last step, when the
    evaluation along the run is the final one, the final metrics are reused."""
    if final is not None and parts.during_evaluator.benchmarks == parts.evaluator.benchmarks \
            and parts.during_evaluator.job.eval.max_questions == parts.job.eval.max_questions:
        return {f"eval/{k[len('final/'):]}": v for k, v in final.items() if k.startswith("final/")}
    metrics = parts.during_evaluator(parts.model, progress=False, shard=_evaluation_shard(parts.job))
    return {f"eval/{k}": v for k, v in metrics.items()}


def run_worker(job: JobSpec, rank: int, world: int, device: torch.device, reporter, options: WorkerOptions,
               checkpoint_root: Optional[str]) -> dict:
    """Run (or continue) the trial; returns the last report's metrics (``final/*`` and
    ``before/*`` evaluations included when asked for)."""
    reporter = as_reporter(reporter)
    failed = True
    try:
        result = _run(job, rank, world, device, reporter, options, checkpoint_root)
        failed = False
        return result
    finally:
        try:
            reporter.close()
        except Exception:
            if not failed:  # a delivery error must not hide the error that stopped the trial
                raise


def _run(job: JobSpec, rank: int, world: int, device: torch.device, reporter: TrialReporter,
         options: WorkerOptions, checkpoint_root: Optional[str]) -> dict:
    t_build = time.time()
    torch.manual_seed(job.seed)

    fsdp = job.train.strategy == "fsdp"
    if fsdp and not dist.is_initialized():
        raise ValueError("train.strategy: 'fsdp' is not allowed without a process group (run it with --ray or "
                         "raysweep.distributed.local.run_ranks)")

    def wrap(model):
        if fsdp:  # fully_shard moves only this rank's shards to the device
            from raysweep.distributed.fsdp import shard_model

            holder["model"] = shard_model(model, device, job.train.precision)
            return holder["model"]
        model.to(device)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model

    holder: dict = {}

    def reduce_grads(grads):
        return holder["reducer"](grads)

    # Under DDP every rank holds the whole reduced gradient, so global scalars are local sums
    # (reduce_sum stays the identity); only unit counts and losses are summed across ranks.
    engine_kwargs = dict(reduce_task_grads=reduce_grads, sum_across_ranks=sum_scalars, world_size=world,
                         reduce_after_synthesis=options.reduce_after_synthesis)
    if fsdp:  # each backward reduce-scatters: task gradients arrive reduced, as shards
        from raysweep.distributed import fsdp as fsdp_mod

        engine_kwargs.update(reduce_task_grads=lambda grads: grads, reduce_sum=sum_scalars,
                             grad_to_local=fsdp_mod.grad_to_local, grad_from_local=fsdp_mod.grad_from_local,
                             params_written=lambda: fsdp_mod.reshard_all(holder["model"]))
    parts = build_trial(job, model_wrapper=wrap, engine_kwargs=engine_kwargs)
    engine = parts.engine
    if fsdp and engine.ctx.reference_model is not None:
        fsdp_mod.shard_model(engine.ctx.reference_model, device, job.train.precision)
    holder["reducer"] = TaskGradReducer(engine.params)
    timings = {**options.timings, **{f"build/{k}": v for k, v in parts.timings.items()}}
    start = 0
    if options.resume_from:
        t0 = time.time()
        log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank == 0 else None
        # FSDP's loader is collective: every rank tries the same candidates and agrees on each
        load = fsdp_mod.load_sharded if fsdp else load_checkpoint
        start, used = load_first_good([options.resume_from, *options.resume_fallbacks], engine.model, engine, log,
                                      load=load)
        timings["resume"] = time.time() - t0
        if rank == 0:
            print(f"  resumed from step {start} ({used})" if used else
                  "  no usable checkpoint: the trial starts over", file=sys.stderr, flush=True)
    timings["build"] = time.time() - t_build

    steps = job.unlearn.steps
    every = job.train.checkpoint_every if options.checkpoint_every is None else options.checkpoint_every
    summary: dict = {f"startup/{k}": v for k, v in timings.items()}
    if options.evaluate_before and start == 0:
        t0 = time.time()
        summary.update(_evaluate(parts, "before"))
        summary["eval_seconds/before"] = time.time() - t0

    def save(step: int) -> Optional[str]:
        if fsdp:  # every rank writes its shards; Ray Train merges the ranks' folders
            if not options.save_checkpoints or checkpoint_root is None:
                return None
            directory = Path(checkpoint_root) / f"step_{step:06d}"
            return str(fsdp_mod.save_sharded(directory, engine.model, engine))
        if rank != 0 or not options.save_checkpoints or checkpoint_root is None:
            return None
        directory = save_checkpoint(Path(checkpoint_root) / f"step_{step:06d}", engine.model, engine)
        if step == steps and job.model.lora is not None:  # the final LoRA model, merged, loadable as is
            from raysweep.models.lora import MERGED_DIR, export_merged

            export_merged(engine.model, directory / MERGED_DIR, parts.tokenizer)
        return str(directory)

    def finish(metrics: dict, step: int, stopped: Optional[str]) -> dict:
        out = {**metrics, **summary}
        if step_times:
            steady = step_times[WARMUP_STEPS:] or step_times
            out["step_seconds_median"] = statistics.median(steady)
            out["steps_timed"] = float(len(steady))
        out["unlearn_seconds"] = unlearn_seconds
        if stopped:
            out["stopped"] = stopped
        elif options.evaluate and step == steps:
            t0 = time.time()
            out.update(_evaluate(parts, "final"))
            out["eval_seconds/final"] = time.time() - t0
            if parts.during_evaluator is not None:  # the trajectory's last point
                out.update(_evaluate_during(parts, out))
        return out

    metrics: dict = {"step": float(start), "start_step": float(start), "total_steps": float(steps)}
    step_times: list[float] = []
    unlearn_seconds = 0.0
    for step in range(start, steps):
        if options.fail_at_step == step and rank == min(1, world - 1) and options.fail_marker \
                and not os.path.exists(options.fail_marker):
            time.sleep(options.fail_delay_s)
            Path(options.fail_marker).write_text(f"failed at step {step}")
            os._exit(1)  # a hard crash: no cleanup, no report
        t0 = time.time()
        batches, probe = micro_batches(parts, step, rank, world)
        metrics = engine.step(batches, probe)
        step_times.append(time.time() - t0)
        unlearn_seconds += step_times[-1]
        metrics.update(step=float(step + 1), start_step=float(start), total_steps=float(steps),
                       step_seconds=step_times[-1])
        if options.check_sync and is_distributed():
            hashes = [None] * world
            dist.all_gather_object(hashes, parameter_hash(engine.model))
            metrics["params_in_sync"] = float(len(set(hashes)) == 1)
        stopped = stop_reason(metrics, options.max_retain_loss)
        reporter.step(step + 1, metrics)
        last = stopped is not None or step + 1 == steps or step + 1 == options.stop_at_step
        due = bool(every) and (step + 1) % every == 0
        if last:
            out = finish(metrics, step + 1, stopped)
            reporter.report(out, save(step + 1))
            return out
        evaluate_now = parts.during_evaluator is not None and (step + 1) % job.eval.every == 0
        if evaluate_now:  # a candidate point: reported with its own checkpoint
            t0 = time.time()
            point = {**metrics, **_evaluate_during(parts), "eval_seconds/during": time.time() - t0}
            reporter.report(point, save(step + 1))
        elif due:
            reporter.report(metrics, save(step + 1))
    # Restored from the checkpoint of the last step (the process died after it but before the
    # trial was recorded as done): nothing left to train, but the end must still be reported.
    out = finish(metrics, int(metrics["step"]), None)
    reporter.report(out, None)
    return out
