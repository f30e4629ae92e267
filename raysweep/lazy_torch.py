"""``torch`` and ``torch.nn.functional`` imported on first use.

The objective and synthesis registries are read by job validation (``raysweep launch`` checks the
names and hyperparameters before anything starts), by ``--dry-run`` and by every command that
reads a job: none of them computes anything, and importing torch costs them 2-3 s. The modules
that compute import torch from here; the first attribute read loads the real module, and each
attribute read through the proxy is cached on it, so the training loop's hot path pays a plain
attribute lookup."""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    def __init__(self, name: str):
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:  # only for attributes not cached yet
        value = getattr(importlib.import_module(self._lazy_name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
