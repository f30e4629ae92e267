"""Functions that run inside spawned ranks (importable by the spawn start method)."""

from pathlib import Path

import torch

from raysweep.distributed.worker import WorkerOptions, run_worker
from raysweep.reporting import TrialReporter
from raysweep.spec import load_job


class Recorder(TrialReporter):
    """One ``(metrics, checkpoint)`` row per step: the step's metrics, merged with what was
    reported to Ray at that step (evaluation, checkpoint) when something was."""

    def __init__(self):
        self.rows = []

    def step(self, step, metrics):
        self.rows.append((dict(metrics), None))

    def report(self, metrics, checkpoint_dir=None):
        if self.rows and self.rows[-1][0].get("step") == metrics.get("step"):
            self.rows[-1] = ({**self.rows[-1][0], **metrics}, checkpoint_dir)
        else:
            self.rows.append((dict(metrics), checkpoint_dir))


def unlearn(rank, world, job_path, overrides, options, ckpt_root):
    job = load_job(job_path, overrides)
    recorder = Recorder()
    run_worker(job, rank, world, torch.device("cpu"), recorder, WorkerOptions(**options), f"{ckpt_root}/rank{rank}")
    return recorder.rows


def sharded_synthesis(rank, world, name, params, seed, steps):
    """Each rank holds a contiguous slice of every gradient tensor (FSDP-style flat sharding)."""
    from raysweep.distributed.collectives import sum_scalars
    from raysweep.synthesis import SynthContext, build_synthesis

    from ..synthesis.test_methods import random_grads

    method = build_synthesis(name, params)
    outs = []
    for step in range(steps):
        tasks = random_grads(seed + step, n_tasks=3 if name == "mgda" else 2)
        shards = [[None if t is None else torch.tensor_split(t.reshape(-1), world)[rank].clone() for t in task] for task in tasks]
        out = method(shards, SynthContext(reduce_sum=sum_scalars))
        outs.append(([None if t is None else t for t in out], dict(method.last_info)))
    return outs


def unlearn_many(rank, world, job_path, runs, root):
    """Several trials in one process (imports paid once): ``runs`` is ``[(tag, overrides, options)]``;
    every rank checkpoints into the same folder per tag (FSDP's sharded checkpoints)."""
    from raysweep.distributed.fsdp import grad_to_local  # noqa: F401 - import check on every rank

    out = {}
    for tag, overrides, options in runs:
        job = load_job(job_path, overrides)
        recorder = Recorder()
        run_worker(job, rank, world, torch.device("cpu"), recorder, WorkerOptions(**options), f"{root}/{tag}")
        out[tag] = recorder.rows
    return out


def fsdp_shard_sizes(rank, world, job_path):
    """(name, local numel, full numel) of every trainable parameter after sharding."""
    from raysweep.distributed.fsdp import shard_model
    from raysweep.models.build import load_causal_lm
    from raysweep.models.prepare import prepare

    model = shard_model(load_causal_lm(prepare(load_job(job_path)).target), torch.device("cpu"))
    return [(n, p.to_local().numel(), p.numel()) for n, p in model.named_parameters()]


def fsdp_shards_then_unlearn(rank, world, job_path, runs, root):
    """Both in one process: the shard sizes, then the trials (one spawn instead of two)."""
    return fsdp_shard_sizes(rank, world, job_path), unlearn_many(rank, world, job_path, runs, root)


def flip_a_byte(path):
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 1
    Path(path).write_bytes(bytes(data))


def fsdp_resume_past_a_damaged_checkpoint(rank, world, job_path, overrides, root):
    """An uninterrupted run; a run stopped at step 3 with a checkpoint every step; rank 0 damages
    one DCP shard file of the step-3 checkpoint; a run resumed from step 3 with steps 2 and 1 as
    its fallbacks. Returns each run's rows."""
    import torch.distributed as dist

    cut = Path(root) / "cut"
    runs = [("whole", {"evaluate": False}), ("cut", {"evaluate": False, "stop_at_step": 3, "checkpoint_every": 1})]
    out = unlearn_many(rank, world, job_path, [(tag, overrides, opts) for tag, opts in runs], root)
    if rank == 0:
        flip_a_byte(sorted((cut / "step_000003" / "sharded").glob("*.distcp"))[-1])
    dist.barrier()
    resumed = {"evaluate": False, "resume_from": str(cut / "step_000003"),
               "resume_fallbacks": [str(cut / "step_000002"), str(cut / "step_000001")]}
    out.update(unlearn_many(rank, world, job_path, [("resumed", overrides, resumed)], root))
    return out


class Payload:
    """Unpickling this runs code: it writes a marker file (what a planted pickle would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def fsdp_resume_from_a_planted_pickle(rank, world, job_path, overrides, root, marker, how):
    """A run stopped at step 1 with its checkpoint; rank 0 replaces the DCP metadata with a pickle
    that would create ``marker``, rewrites meta.json to match, and hands the file to another user
    (``how="owner"``) or makes it writable by others (``"mode"``); then every rank resumes from it.
    Returns what each rank printed and the step it started from."""
    import json
    import os
    import pickle

    import torch.distributed as dist

    from raysweep.distributed.checkpoint import _sha256

    unlearn_many(rank, world, job_path, [("cut", overrides, {"evaluate": False, "stop_at_step": 1,
                                                             "checkpoint_every": 1})], root)
    folder = Path(root) / "cut" / "step_000001"
    if rank == 0:
        planted = folder / "sharded" / ".metadata"
        planted.write_bytes(pickle.dumps(Payload(marker)))
        meta = json.loads((folder / "meta.json").read_text())
        meta["sha256"]["sharded/.metadata"] = _sha256(planted)
        (folder / "meta.json").write_text(json.dumps(meta))
        if how == "owner":
            os.chown(planted, 65534, 65534)
        else:
            os.chmod(planted, 0o666)
    dist.barrier()
    import contextlib
    import io

    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        rows = unlearn_many(rank, world, job_path, [("resumed", overrides, {"evaluate": False,
                                                                          "resume_from": str(folder)})], root)
    return said.getvalue(), rows["resumed"][0][0]["start_step"]
