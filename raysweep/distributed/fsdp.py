"""FSDP2 (``train.strategy: fsdp``): parameters, gradients, task buffers and optimizer state sharded
across the ranks with ``torch.distributed.fsdp.fully_shard`` (spec 3.2 rule 3).

* Every task backward reduce-scatters (mean over ranks): each task's gradient arrives already
  reduced, as this rank's shard (``p.grad.to_local()``), and is stashed in an fp32 shard buffer.
  No separate task all-reduce is needed (``reduce_task_grads`` is the identity).
* Synthesis runs shard-locally; every global scalar (dots, norms, per-tensor dots of PCGrad-R's
  module scope for tensors split across ranks, MGDA's Gram matrix, GRU's projection) is a local
  partial sum followed by one ``all_reduce(SUM)`` (``reduce_sum = sum_scalars``). GRU's EMA is a
  shard-local buffer like the task buffers.
* The synthesised shard becomes ``p.grad`` again (a DTensor) and the optimizer steps the shards.
* Checkpoints: model and optimizer through ``torch.distributed.checkpoint`` (every rank writes its
  own shard files), per-rank synthesis state and RNG (CUDA's too), and at every checkpoint a
  consolidated ``model.safetensors`` (full state dict gathered to rank 0): any checkpoint can
  become an exported point (``eval.every``, an MO-ASHA stop), and at our sizes the gather is cheap.
  They are as safe as single-process ones (:mod:`raysweep.distributed.checkpoint`): written under a
  temporary name and renamed into place once every rank is done, ``meta.json`` with the sha256 of
  every file (DCP shards, every rank's state, the weights), verified on load on every rank, and a
  damaged one falls back to the previous good one on all ranks together.

The reference model (NPO, KL, RMU) is sharded the same way. Every rank must run the same forwards
in the same order (each one all-gathers), so evaluation is not split across ranks under FSDP.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

SHARDED_DIR = "sharded"
_MP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Decoder blocks to shard one by one (each all-gathers only while it runs)."""
    from raysweep.objectives.rmu import decoder_layers

    try:
        return list(decoder_layers(model))
    except TypeError:  # not Llama-style: the root alone is one shard group
        return []


def shard_model(model: torch.nn.Module, device: torch.device, precision: str = "fp32") -> torch.nn.Module:
    """``fully_shard`` every decoder block, then the root, over all ranks of the default group.
    Under bf16/fp16 the all-gathered parameters are cast for compute while shards, gradient
    reduction and the optimizer stay fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)  # the mesh takes the current device of each rank
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh}
    if precision in _MP_DTYPES:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=_MP_DTYPES[precision], reduce_dtype=torch.float32)
    for block in _blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def grad_to_local(g: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a reduce-scattered gradient."""
    return g.to_local() if hasattr(g, "to_local") else g


def grad_from_local(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The synthesised shard back as the parameter's (sharded) gradient."""
    from torch.distributed.tensor import DTensor

    if not isinstance(p, DTensor):
        return t.to(p.dtype)
    return DTensor.from_local(t.to(p.dtype), p.device_mesh, p.placements, run_check=False, shape=p.shape,
                              stride=p.stride())


def reshard_all(model: torch.nn.Module) -> None:
    """Drop every gathered (unsharded) parameter copy. FSDP2 keeps the root's parameters gathered
    after a forward without backward, so parameters written in place afterwards (AutoLR's probes)
    would otherwise be read stale by the next forward."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (CPU); empty on the other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _rank_state_files(rank: int) -> tuple[str, str]:
    # safetensors + JSON, never a pickle (see distributed/checkpoint.py)
    return f"train_state_rank{rank}.safetensors", f"train_state_rank{rank}.json"


def _agree(failure: Optional[BaseException], directory: Path, what: str) -> None:
    """Collective: every rank raises when any rank failed, so no rank goes on alone into a
    collective the others never join, and all ranks settle on the same checkpoint."""
    from raysweep.distributed.checkpoint import CheckpointError, one_line

    reasons = [None] * dist.get_world_size()
    dist.all_gather_object(reasons, None if failure is None else
                           str(failure) if isinstance(failure, CheckpointError) else one_line(failure))
    if failure is not None:
        raise failure
    failed = [(r, reason) for r, reason in enumerate(reasons) if reason is not None]
    if failed:
        rank, reason = failed[0]
        raise CheckpointError(f"checkpoint '{directory}': {what} failed on rank {rank} ({reason})")


def save_sharded(directory: Path, model: torch.nn.Module, engine) -> Path:
    """Collective. Every rank writes into one temporary folder (its DCP shard files and its own
    train state; rank 0 also the consolidated weights); after a barrier, rank 0 writes meta.json
    with the sha256 of every file and renames the folder into place; a barrier after. Under Ray
    Train each rank has its own folder (Ray merges them): each rank renames its own, and rank 0's
    meta.json holds the checksums gathered from all of them."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from raysweep.distributed.checkpoint import (FORMAT, WEIGHTS, _untie, hash_files, install, temp_folder,
                                                 write_error, write_meta, write_state)
    from raysweep.rng import rng_state

    directory, rank = Path(directory), dist.get_rank()
    token = [uuid.uuid4().hex if rank == 0 else None]  # one temporary name for ranks sharing a folder
    dist.broadcast_object_list(token, src=0)
    tmp = temp_folder(directory, token[0])
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model_sd, optim_sd = get_state_dict(model, engine.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / SHARDED_DIR))
        full = full_state_dict(model)  # every checkpoint can become the trial's exported point
        failure = None
        try:  # rank-local writes: a failure is agreed on below, never left to hang the others
            write_state(tmp, {"step": engine.step_count, "synthesis": engine.synthesis.state_dict(),
                              "loss_scale": engine.loss_scale, "world_size": dist.get_world_size(),
                              "rng": rng_state()}, *_rank_state_files(rank))
            if rank == 0:
                save_file(_untie({k: v.contiguous() for k, v in full.items()}), str(tmp / WEIGHTS))
        except Exception as err:  # noqa: BLE001 - shared with the other ranks, then raised
            failure = err
        _agree(failure, directory, "writing")
        # A folder shared with rank 0 is rank 0's to seal and rename; a folder of its own (Ray
        # Train) each rank renames itself.
        owner = rank == 0 or not (tmp / _rank_state_files(0)[1]).exists()
        sums = [None] * dist.get_world_size()
        dist.all_gather_object(sums, hash_files(tmp) if owner else {})
        failure = None
        try:
            if rank == 0:
                write_meta(tmp, {"step": engine.step_count, "format": FORMAT, "strategy": "fsdp",
                                 "world_size": dist.get_world_size(),
                                 "sha256": {k: v for rank_sums in sums for k, v in rank_sums.items()}})
            if owner:
                install(tmp, directory)
        except Exception as err:  # noqa: BLE001
            failure = err
        _agree(failure, directory, "renaming")  # also the barrier: no rank reports a folder before all are in place
    except BaseException as err:  # whatever stopped the write, no temporary folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(directory, err) from err
        raise
    return directory


def load_sharded(directory: Path, model: torch.nn.Module, engine) -> int:
    """Collective. Verified against meta.json on every rank and loaded; any rank's refusal is a
    CheckpointError on all of them (see :func:`_agree`), so ``load_first_good`` moves every rank
    on to the same previous checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from raysweep.distributed.checkpoint import (WEIGHTS, CheckpointError, checkpoint_errors, read_state,
                                                 verify_checkpoint)
    from raysweep.rng import set_rng_state
    from raysweep.validation import untrusted_file

    directory, rank, world = Path(directory), dist.get_rank(), dist.get_world_size()
    own, failure = None, None
    try:
        # DCP reads its .metadata with pickle: only from files nobody else could have written
        # (checksums do not help there, whoever plants a file can rewrite meta.json too)
        why = untrusted_file(directory)
        if why is not None:
            raise CheckpointError(f"checkpoint '{directory}': {why}, which is not allowed (DCP unpickles its "
                                  "metadata: only your own files, not writable by group or others, are loaded)")
        meta = verify_checkpoint(directory, required={WEIGHTS, f"{SHARDED_DIR}/.metadata", *_rank_state_files(rank)})
        if meta.get("world_size") != world:
            raise ValueError(f"resume: the checkpoint was sharded over {meta.get('world_size')} ranks, "
                             f"not {world} (train.workers must match)")
        own = read_state(directory, *_rank_state_files(rank))
    except (CheckpointError, ValueError) as err:  # ValueError: a setting to change; no fallback helps
        failure = err
    _agree(failure, directory, "verifying")
    failure = None
    try:
        with checkpoint_errors(directory, f"does not fit this trial (rank {rank})"):
            model_sd, optim_sd = get_state_dict(model, engine.optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
            set_state_dict(model, engine.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
            engine.synthesis.load_state_dict(own["synthesis"])
    except CheckpointError as err:
        failure = err
    _agree(failure, directory, "loading")
    engine.step_count = int(own["step"])
    engine.loss_scale = float(own["loss_scale"])
    set_rng_state(own["rng"])
    return engine.step_count
