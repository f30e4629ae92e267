"""Trial checkpoints: weights (safetensors), optimizer, synthesis state (GRU's EMA, AutoLR's lr),
step (the sampler position is a pure function of it) and RNG states."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
META = "meta.json"


def save_checkpoint(directory: Path, model: torch.nn.Module, engine, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)
    state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    save_file(_untie(state), str(directory / WEIGHTS))
    torch.save({
        "engine": engine.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }, directory / STATE)
    (directory / META).write_text(json.dumps({"step": engine.step_count, **(extra or {})}))
    return directory


def _untie(state: dict) -> dict:
    """safetensors refuses shared storage (tied embeddings): store copies."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def load_checkpoint(directory: Path, model: torch.nn.Module, engine) -> int:
    """Restore weights, optimizer/synthesis state and RNG; returns the step to continue from."""
    from safetensors.torch import load_file

    directory = Path(directory)
    inner = getattr(model, "module", model)
    weights = load_file(str(directory / WEIGHTS), device=str(next(inner.parameters()).device))
    inner.load_state_dict(weights, strict=False)
    state = torch.load(directory / STATE, weights_only=False, map_location=engine.device)
    engine.load_state_dict(state["engine"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(json.loads((directory / META).read_text())["step"])


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / WEIGHTS))
