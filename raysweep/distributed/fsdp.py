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
  own shard files), per-rank synthesis state and RNG, and at the end a consolidated
  ``model.safetensors`` (full state dict gathered to rank 0).

The reference model (NPO, KL, RMU) is sharded the same way. Every rank must run the same forwards
in the same order (each one all-gathers), so evaluation is not split across ranks under FSDP.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import numpy as np
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


def save_sharded(directory: Path, model: torch.nn.Module, engine, rank: int, export_full: bool) -> Path:
    """Every rank calls this with its own (or a shared) directory; see the module docstring."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from raysweep.distributed.checkpoint import META, WEIGHTS, _sha256, _untie, encode_state

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, engine.optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / SHARDED_DIR))
    tensors: dict[str, torch.Tensor] = {}
    structure = encode_state({
        "step": engine.step_count,
        "synthesis": engine.synthesis.state_dict(),  # shard-local (GRU's EMA)
        "loss_scale": engine.loss_scale,
        "world_size": dist.get_world_size(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }, tensors)
    tensor_file, json_file = _rank_state_files(rank)
    save_file(tensors, str(directory / tensor_file))
    (directory / json_file).write_text(json.dumps(structure))
    if export_full:
        full = full_state_dict(model)
        if rank == 0:
            save_file(_untie({k: v.contiguous() for k, v in full.items()}), str(directory / WEIGHTS))
    if rank == 0:
        sums = {WEIGHTS: _sha256(directory / WEIGHTS)} if export_full else {}
        (directory / META).write_text(json.dumps({"step": engine.step_count, "strategy": "fsdp", "sha256": sums}))
    dist.barrier()
    return directory


def load_sharded(directory: Path, model: torch.nn.Module, engine, rank: int) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from safetensors.torch import load_file

    from raysweep.distributed.checkpoint import decode_state

    directory = Path(directory)
    tensor_file, json_file = _rank_state_files(rank)
    own = decode_state(json.loads((directory / json_file).read_text()), load_file(str(directory / tensor_file)))
    if own["world_size"] != dist.get_world_size():
        raise ValueError(f"resume: the checkpoint was sharded over {own['world_size']} ranks, "
                         f"not {dist.get_world_size()} (train.workers must match)")
    model_sd, optim_sd = get_state_dict(model, engine.optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
    set_state_dict(model, engine.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    engine.step_count = int(own["step"])
    engine.synthesis.load_state_dict(own["synthesis"])
    engine.loss_scale = float(own["loss_scale"])
    rng = own["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return engine.step_count


def is_sharded_checkpoint(directory: Optional[str]) -> bool:
    return directory is not None and (Path(directory) / SHARDED_DIR).is_dir()
