"""Trial checkpoints: weights (safetensors), optimizer, synthesis state (GRU's EMA, AutoLR's lr),
step (the sampler position is a pure function of it) and RNG states.

Safety and integrity (issue 12):

* nothing here unpickles: the trainer state is tensors in ``train_state.safetensors`` plus its
  structure (dicts, lists, tuples, numbers, strings) in ``train_state.json``; a checkpoint holding a
  pickle (``train_state.pt`` of older versions, or anything planted in shared storage or an MLflow
  artifact) is refused, never opened;
* a checkpoint is written under a temporary name, fsynced (files and folder) and renamed into
  place, so a reader sees all of it or none of it; an overwrite moves the old version aside first,
  and the fallbacks include it (:func:`previous_checkpoints`) should the writer die in between;
* ``meta.json`` carries the sha256 of every file and is checked on load, so a truncated or
  modified checkpoint is a clear :class:`CheckpointError`; so is one that does not fit the model
  (weights are loaded strictly; a LoRA checkpoint holds the adapters alone) or the optimizer, and
  the caller falls back to the previous good one (:func:`load_first_good`).

FSDP checkpoints (:mod:`raysweep.distributed.fsdp`) are written and verified with the same pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
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


def write_state(directory: Path, state: dict, tensor_file: str = STATE_TENSORS, json_file: str = STATE_JSON) -> None:
    """``state`` as safetensors + JSON (never a pickle)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = encode_state(state, tensors)
    save_file(tensors, str(Path(directory) / tensor_file))
    (Path(directory) / json_file).write_text(json.dumps(structure))


def temp_folder(directory: Path, token) -> Path:
    """Where a checkpoint is written before it is renamed to ``directory``."""
    return directory.parent / f".{directory.name}.tmp-{token}"


def _moved_aside(directory: Path) -> list[Path]:
    """The previous version of ``directory``, moved aside while a new one was renamed in (only
    one is left when the writer died between the two renames)."""
    return sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` but meta.json (relative names), each fsynced first."""
    sums = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != META:
            _fsync(path)
            sums[name] = _sha256(path)
    return sums


def write_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / META).write_text(json.dumps(meta))
    _fsync(Path(folder) / META)


def install(tmp: Path, directory: Path) -> None:
    """Rename the finished ``tmp`` to ``directory``, durably. A rename cannot replace a non-empty
    folder, so an existing one is moved aside first; :func:`previous_checkpoints` finds it if the
    process dies between the two renames."""
    _fsync(tmp)  # the folder's entries, before the rename makes them visible
    if directory.exists():
        os.replace(directory, directory.parent / f".{directory.name}.old-{os.getpid()}")
    os.replace(tmp, directory)
    _fsync(directory.parent)
    for old in _moved_aside(directory):  # superseded by the checkpoint just installed
        shutil.rmtree(old, ignore_errors=True)


def write_error(directory: Path, err: OSError) -> CheckpointError:
    return CheckpointError(f"cannot write checkpoint '{directory}': {err.strerror or err} "
                           "(nothing was written; the previous checkpoint stays the last good one)")


def _write_installed(directory: Path, fill) -> Path:
    """``fill(tmp)`` writes the checkpoint's files into a temporary folder, which is then fsynced
    and renamed to ``directory``; whatever stops the write, no temporary folder is left behind."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(directory, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        install(tmp, directory)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(directory, err) from err
        raise
    return directory


def save_checkpoint(directory: Path, model: torch.nn.Module, engine, extra: dict | None = None) -> Path:
    """Write the checkpoint under a temporary name, fsync, then rename it to ``directory``."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        inner = getattr(model, "module", model)
        from raysweep.models.lora import ADAPTER_DIR, is_peft

        if is_peft(inner):
            inner.save_pretrained(tmp / ADAPTER_DIR)  # also in peft's own format, for users
        save_file(_untie(_stored_weights(inner)), str(tmp / WEIGHTS))
        write_state(tmp, {"engine": engine.state_dict(), "rng": rng_state()})
        write_meta(tmp, {"step": engine.step_count, "format": FORMAT, "sha256": hash_files(tmp), **(extra or {})})

    return _write_installed(directory, fill)


def save_weights(directory: Path, model: torch.nn.Module, extra: dict | None = None) -> Path:
    """A weights-only checkpoint (no trainer state: nothing resumes from it; export and evaluation
    read it): what the model stores (a LoRA model's adapters alone), written like a checkpoint."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_file(_untie(_stored_weights(getattr(model, "module", model))), str(tmp / WEIGHTS))
        write_meta(tmp, {"format": FORMAT, "weights_only": True, "sha256": hash_files(tmp), **(extra or {})})

    return _write_installed(directory, fill)


def _stored_weights(inner: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the model: a LoRA model's adapters alone (its base never changes)."""
    from raysweep.models.lora import adapter_state, is_peft

    state = adapter_state(inner) if is_peft(inner) else inner.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store copies."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


# ---- reading ----------------------------------------------------------------------------------
def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"


@contextmanager
def checkpoint_errors(directory: Path, what: str):
    """Any error inside becomes one CheckpointError naming ``directory`` and ``what`` went wrong,
    so the caller falls back to the previous checkpoint instead of crashing."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - parse or load errors: this checkpoint is not usable here
        raise CheckpointError(f"checkpoint '{directory}': {what} ({one_line(err)})") from None


def on_local_disk(restored) -> bool:
    """A checkpoint Ray hands back lives on a local or shared filesystem (not an object store)."""
    return getattr(getattr(restored, "filesystem", None), "type_name", "local") == "local"


def check_restored(restored) -> None:
    """A checkpoint Ray hands back from local or shared storage (before it is copied, which would
    make the copy ours): every file there must be this user's own and not writable by group or
    others, since an FSDP checkpoint's DCP metadata is a pickle. Object stores are left to their
    own permissions."""
    from raysweep.validation import untrusted_file

    if not on_local_disk(restored):
        return
    why = untrusted_file(restored.path)
    if why is not None:
        raise CheckpointError(f"checkpoint '{restored.path}': {why}, which is not allowed (only your own files, "
                              "not writable by group or others, are restored)")


def verify_checkpoint(directory: Path, only: Iterable[str] | None = None,
                      required: Iterable[str] | None = None) -> dict:
    """``meta.json`` of a complete, unmodified, pickle-free checkpoint, or a CheckpointError.
    ``only``: the files that must be present and intact (the weights alone: an exported copy).
    ``required``: the files meta.json must list (default: the single-process layout's, or the
    weights for an FSDP checkpoint, whose loader names its own)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint '{directory}' does not exist")
    if (directory / LEGACY_PICKLE).exists() and not (directory / STATE_JSON).exists():
        raise CheckpointError(f"checkpoint '{directory}': {LEGACY_PICKLE} is not allowed (a pickle, never loaded: "
                              "it could run code; checkpoints hold safetensors + JSON)")
    try:
        meta = json.loads((directory / META).read_text())
        sums = meta["sha256"]
        if required is None:  # FSDP's loader names its own files; a weights-only checkpoint has no trainer state
            required = {WEIGHTS} if meta.get("strategy") == "fsdp" or meta.get("weights_only") \
                else {WEIGHTS, STATE_TENSORS, STATE_JSON}
        if not isinstance(sums, dict) or not set(required) <= set(sums):
            raise ValueError("file list")
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint '{directory}': {META} is missing or unreadable (an incomplete or "
                              "foreign checkpoint)") from None
    inside = directory.resolve()
    for name, expected in sums.items():
        if only is not None and name not in only:
            continue
        path = directory / name
        # meta.json is data from storage: a name may only point at a regular file inside the folder
        # ("../x" would read outside it, "/dev/zero" would never end)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts \
                or not path.resolve().is_relative_to(inside) or (path.exists() and not path.resolve().is_file()):
            raise CheckpointError(f"checkpoint '{directory}': {META} names {name!r}, which is not allowed "
                                  "(a file inside the checkpoint folder)")
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{directory}': {name} is missing (a truncated checkpoint)")
        if _sha256(path) != expected:
            raise CheckpointError(f"checkpoint '{directory}': {name} does not match its sha256 in {META} "
                                  "(truncated or modified; not used)")
    return meta


def read_state(directory: Path, tensor_file: str = STATE_TENSORS, json_file: str = STATE_JSON) -> Any:
    from safetensors.torch import load_file

    # the checksums match, but meta.json itself may have been rewritten by whoever planted the files
    with checkpoint_errors(directory, "not a raysweep checkpoint"):
        return decode_state(json.loads((Path(directory) / json_file).read_text()),
                            load_file(str(Path(directory) / tensor_file)))


def check_fits(directory: Path, inner: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """The checkpoint's weights are exactly what this model stores (names and shapes), checked
    before anything is copied so that a misfit leaves the model untouched."""
    from raysweep.models.lora import adapter_state, is_peft

    expected = adapter_state(inner) if is_peft(inner) else inner.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        raise CheckpointError(f"checkpoint '{directory}': does not fit this model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, other shapes {reshaped[:3]})")


def load_checkpoint(directory: Path, model: torch.nn.Module, engine) -> int:
    """Restore weights, optimizer/synthesis state and RNG; returns the step to continue from.
    Every way it can fail is a CheckpointError (see :func:`load_first_good`)."""
    from safetensors.torch import load_file

    from raysweep.models.lora import is_peft

    directory = Path(directory)
    meta = verify_checkpoint(directory)
    inner = getattr(model, "module", model)
    with checkpoint_errors(directory, "not a raysweep checkpoint"):
        weights = load_file(str(directory / WEIGHTS), device=str(next(inner.parameters()).device))
    state = read_state(directory)
    check_fits(directory, inner, weights)
    with checkpoint_errors(directory, "does not fit this trial's optimizer or synthesis"):
        engine.load_state_dict(state["engine"])  # before the weights: its errors leave the model untouched
        inner.load_state_dict(weights, strict=not is_peft(inner))  # LoRA: the adapters alone (checked above)
    set_rng_state(state["rng"])
    return int(meta["step"])


def load_first_good(candidates: Iterable[Path], model: torch.nn.Module, engine, log=None,
                    load=load_checkpoint) -> tuple[int, Optional[Path]]:
    """Restore from the first candidate that ``load`` accepts (newest first); a bad one is reported
    and skipped. ``(0, None)`` when none is usable: the trial starts over rather than trust it.
    ``load(directory, model, engine)`` returns the step or raises CheckpointError (FSDP's loader
    raises on every rank when any rank refuses, so all ranks settle on the same checkpoint)."""
    for directory in candidates:
        try:
            return load(Path(directory), model, engine), Path(directory)
        except CheckpointError as err:
            if log is not None:
                log(f"  {err}; trying the previous checkpoint")
    return 0, None


def previous_checkpoints(path: str | Path) -> list[Path]:
    """The fallbacks when the checkpoint at ``path`` is damaged, newest first: its previous
    version moved aside by an overwrite that did not finish, then the older ``checkpoint_NNNNNN``
    siblings (how Tune/Train keep a trial's checkpoints)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    older = [p for p in path.parent.glob("checkpoint_*") if p.is_dir() and p.name < path.name]
    return _moved_aside(path) + sorted(older, key=lambda p: p.name, reverse=True)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    verify_checkpoint(directory, only=(WEIGHTS,))  # the optimizer state is not needed for weights
    return load_file(str(Path(directory) / WEIGHTS))
