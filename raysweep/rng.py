"""The process's global random generators (torch CPU and CUDA, Python ``random``, NumPy) as one
state: what a checkpoint saves and restores, and what an evaluation gives back untouched, so that
neither resuming nor evaluating along the run changes the draws of the steps that follow."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from raysweep.lazy_torch import torch  # the evaluation suite is imported by commands that never compute


def rng_state() -> dict:
    # CUDA's generators only once CUDA is in use: reading them would start a context on every GPU.
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_preserved() -> Iterator[None]:
    """Whatever the block draws, the generators leave it as they entered it."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
