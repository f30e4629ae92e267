"""LoRA adapters through peft (``model.lora``): only adapter parameters train and are synthesised,
so each task buffer is adapter-sized. Checkpoints hold the adapters; the final model can be
exported merged (``merge_and_unload``) as a plain ``from_pretrained`` directory."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Optional

import torch

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
_PEFT_PREFIX = "base_model.model."
_ADAPTER_PART = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.[^.]+")


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(getattr(model, "module", model), "peft_config")


def apply_lora(model: torch.nn.Module, spec) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters per ``spec`` (r, alpha, dropout, target_modules)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"model.lora.target_modules: {list(spec.target_modules)} is not allowed ({err})") from None


def host_name(name: str) -> str:
    """The base model's name of the weight a parameter belongs to: an adapter's
    ``base_model.model.X.lora_A.default.weight`` and the wrapped ``X.base_layer.weight`` both
    map to ``X.weight``, so layer restrictions written for the plain model (RMU) apply to LoRA."""
    name = name.removeprefix(_PEFT_PREFIX)
    name = _ADAPTER_PART.sub("", name)
    return name.replace(".base_layer.", ".")


def restrict_trainable(model: torch.nn.Module, allowed: Optional[list[str]]) -> None:
    """Freeze every parameter whose host weight is not in ``allowed`` (None: change nothing)."""
    if allowed is None:
        return
    allowed = set(allowed)
    for name, p in getattr(model, "module", model).named_parameters():
        if host_name(name) not in allowed:
            p.requires_grad_(False)


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of a peft model's state dict (its own key names)."""
    inner = getattr(model, "module", model)
    return {k: v for k, v in inner.state_dict().items() if ".lora_" in k}


def export_merged(model: torch.nn.Module, out_dir: Path, tokenizer=None) -> Path:
    """Merge the adapters into a copy of the base weights and ``save_pretrained`` it."""
    inner = getattr(model, "module", model)
    merged = copy.deepcopy(inner).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
