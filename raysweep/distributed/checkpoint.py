"""Trial checkpoints: weights (safetensors), optimizer, synthesis state (GRU's EMA, AutoLR's lr),
step (the sampler position is a pure function of it) and RNG states.

Safety and integrity (issue 12):

* nothing here unpickles: the trainer state is tensors in ``train_state.safetensors`` plus its
  structure (dicts, lists, tuples, numbers, strings) in ``train_state.json``; a checkpoint holding a
  pickle (``train_state.pt`` of older versions, or anything planted in shared storage or an MLflow
  artifact) is refused, never opened;
* a checkpoint is written under a temporary name and renamed into place, so a reader sees all of
  it or none of it; ``meta.json`` carries the sha256 of every file and is checked on load, so a
  truncated or modified checkpoint is a clear :class:`CheckpointError`, and the caller falls back
  to the previous good one (:func:`load_first_good`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from raysweep.rng import rng_state, set_rng_state

WEIGHTS = "model.safetensors"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
META = "meta.json"
LEGACY_PICKLE = "train_state.pt"
FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint that must not be used; ``str()`` is one line naming it and why."""


# ---- pickle-free trainer state ----------------------------------------------------------------
def encode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able structure of ``obj``; its tensors (and numpy arrays) go to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        wide = obj.astype(np.int64) if obj.dtype.kind in "ui" else obj  # uint32 (numpy RNG) as int64
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide).copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[encode_state(k, tensors), encode_state(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state: a {type(obj).__name__} is not allowed "
                    "(tensors, arrays, numbers, strings, lists, tuples, dicts)")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__dict__"]}
        raise CheckpointError(f"{STATE_JSON}: an object with keys {sorted(obj)[:4]} is not allowed (unknown encoding)")
    return obj


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# ---- writing ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: Path, model: torch.nn.Module, engine, extra: dict | None = None) -> Path:
    """Write the checkpoint under a temporary name, fsync, then rename it to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        inner = getattr(model, "module", model)
        from raysweep.models.lora import ADAPTER_DIR, adapter_state, is_peft

        if is_peft(inner):  # the base never changes: a LoRA checkpoint holds only the adapters
            weights = {k: v.detach().cpu().contiguous() for k, v in adapter_state(inner).items()}
            inner.save_pretrained(tmp / ADAPTER_DIR)  # also in peft's own format, for users
        else:
            weights = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
        save_file(_untie(weights), str(tmp / WEIGHTS))
        tensors: dict[str, torch.Tensor] = {}
        structure = encode_state({"engine": engine.state_dict(), "rng": rng_state()}, tensors)
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(structure))
        files = [WEIGHTS, STATE_TENSORS, STATE_JSON]
        for name in files:
            _fsync(tmp / name)
        meta = {"step": engine.step_count, "format": FORMAT, "sha256": {n: _sha256(tmp / n) for n in files},
                **(extra or {})}
        (tmp / META).write_text(json.dumps(meta))
        _fsync(tmp / META)
        if directory.exists():  # a rename cannot replace a non-empty folder: move the old one aside
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync(directory.parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint '{directory}': {err.strerror or err} "
                              "(nothing was written; the previous checkpoint stays the last good one)") from err
    return directory


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store copies."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


# ---- reading ----------------------------------------------------------------------------------
def verify_checkpoint(directory: Path, only: Iterable[str] | None = None) -> dict:
    """``meta.json`` of a complete, unmodified, pickle-free checkpoint, or a CheckpointError.
    ``only``: the files that must be present and intact (the weights alone: an exported copy)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint '{directory}' does not exist")
    if (directory / LEGACY_PICKLE).exists() and not (directory / STATE_JSON).exists():
        raise CheckpointError(f"checkpoint '{directory}': {LEGACY_PICKLE} is not allowed (a pickle, never loaded: "
                              "it could run code; checkpoints hold safetensors + JSON)")
    try:
        meta = json.loads((directory / META).read_text())
        sums = meta["sha256"]
        # An FSDP2 checkpoint keeps its sharded state in torch.distributed.checkpoint's own files;
        # its meta covers the consolidated weights.
        required = {WEIGHTS} if meta.get("strategy") == "fsdp" else {WEIGHTS, STATE_TENSORS, STATE_JSON}
        if not isinstance(sums, dict) or not required <= set(sums):
            raise ValueError("file list")
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint '{directory}': {META} is missing or unreadable (an incomplete or "
                              "foreign checkpoint)") from None
    for name, expected in sums.items():
        if only is not None and name not in only:
            continue
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{directory}': {name} is missing (a truncated checkpoint)")
        if _sha256(path) != expected:
            raise CheckpointError(f"checkpoint '{directory}': {name} does not match its sha256 in {META} "
                                  "(truncated or modified; not used)")
    return meta


def load_checkpoint(directory: Path, model: torch.nn.Module, engine) -> int:
    """Restore weights, optimizer/synthesis state and RNG; returns the step to continue from."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = verify_checkpoint(directory)
    inner = getattr(model, "module", model)
    try:  # the checksums match, but meta.json itself may have been rewritten by whoever planted the files
        weights = load_file(str(directory / WEIGHTS), device=str(next(inner.parameters()).device))
        state = decode_state(json.loads((directory / STATE_JSON).read_text()),
                             load_file(str(directory / STATE_TENSORS)))
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors/json parse errors: the file is not what it claims
        raise CheckpointError(f"checkpoint '{directory}': not a raysweep checkpoint "
                              f"({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    inner.load_state_dict(weights, strict=False)
    engine.load_state_dict(state["engine"])
    set_rng_state(state["rng"])
    return int(meta["step"])


def load_first_good(candidates: Iterable[Path], model: torch.nn.Module, engine,
                    log=None) -> tuple[int, Optional[Path]]:
    """Restore from the first candidate that verifies (newest first); a bad one is reported and
    skipped. ``(0, None)`` when none is usable: the trial starts over rather than trust it."""
    for directory in candidates:
        try:
            return load_checkpoint(Path(directory), model, engine), Path(directory)
        except CheckpointError as err:
            if log is not None:
                log(f"  {err}; trying the previous checkpoint")
    return 0, None


def previous_checkpoints(path: str | Path) -> list[Path]:
    """Tune/Train keep a trial's checkpoints as ``checkpoint_NNNNNN`` siblings: the older ones,
    newest first (the fallbacks when the latest is damaged)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    older = [p for p in path.parent.glob("checkpoint_*") if p.is_dir() and p.name < path.name]
    return sorted(older, key=lambda p: p.name, reverse=True)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    verify_checkpoint(directory, only=(WEIGHTS,))  # the optimizer state is not needed for weights
    return load_file(str(Path(directory) / WEIGHTS))
