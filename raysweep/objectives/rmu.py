"""RMU: representation misdirection (spec 2.7).

Forget: ``MSE(h_ℓ(x_f), c·u)`` with ``u = U/||U||``, ``U ~ Uniform[0,1)^d`` drawn once (seeded).
Retain (``rmu_retain``): ``MSE(h_ℓ(x_r), h_ℓ^ref(x_r))``. ``h_ℓ`` is the output of decoder
block ``ℓ``. Only ``mlp.down_proj.weight`` of blocks ``ℓ-2..ℓ`` trains. The MSE follows the
open-unlearning/SAGO port (spec 2.7): mean over the hidden dimension, then per sequence the sum
over its label positions divided by its number of labels, then a mean over the sequences.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from raysweep.lazy_torch import torch
from raysweep.objectives.base import IGNORE_INDEX, Objective, register


def decoder_layers(model) -> torch.nn.ModuleList:
    inner = getattr(model, "module", model)  # DDP
    if hasattr(inner, "get_base_model"):  # peft: adapters live inside the same blocks
        inner = inner.get_base_model()
    base = getattr(inner, "model", None)
    if base is None or not hasattr(base, "layers"):
        raise TypeError("RMU needs a decoder-only model with model.model.layers (Llama-style)")
    return base.layers


@contextmanager
def capture_block_output(model, layer: int):
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"rmu.layer: {layer} is not allowed (0..{len(layers) - 1} for this model)")
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["h"] = output[0] if isinstance(output, tuple) else output

    handle = layers[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def block_output(model, batch: dict, layer: int) -> torch.Tensor:
    with capture_block_output(model, layer) as store:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return store["h"].float()


def label_positions(batch: dict) -> torch.Tensor:
    """Positions whose label is not -100, unshifted: the port scores the hidden state at
    position t for the label at t (spec 2.7); activations are not next-token predictions."""
    return batch["labels"] != IGNORE_INDEX


def per_sequence_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ctx) -> torch.Tensor:
    """Spec 2.7, open-unlearning/SAGO form: mean over d, then per row Σ over its label positions /
    its number of labels, then a mean over rows. The unit is a row, so the row means are summed
    and divided by ``ctx.normaliser(rows)``: under data parallelism and accumulation that is the
    global row count, and the gradient is that of the one big batch's mean (``units`` = rows).
    A row without labels contributes 0 (the port would divide by zero)."""
    per_position = ((h - target) ** 2).mean(-1)
    mask = mask.to(per_position.dtype)
    per_row = (per_position * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return per_row.sum() / ctx.normaliser(per_row.shape[0])


@dataclass
class _RMUBase(Objective):
    layer: int = 2

    def units(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])  # a mean over sequences

    def trainable_filter(self, model) -> list[str]:
        names = []
        for i in range(max(0, self.layer - 2), self.layer + 1):
            names.append(f"model.layers.{i}.mlp.down_proj.weight")
        return names


@register
@dataclass
class RMU(_RMUBase):
    name = "rmu"
    steering_coeff: float = 6.5
    seed: int = 0

    def control_vector(self, dim: int, device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.rand(dim, generator=gen)  # uniform, not Gaussian: every entry positive
        return (u / u.norm()).to(device)

    def __call__(self, model, batch, ctx):
        h = block_output(model, batch, self.layer)
        target = self.steering_coeff * self.control_vector(h.shape[-1], h.device)
        return per_sequence_mse(h, target.expand_as(h), label_positions(batch), ctx)


@register
@dataclass
class RMURetain(_RMUBase):
    name = "rmu_retain"
    role = "retain"
    needs_reference = True

    def __call__(self, model, batch, ctx):
        h = block_output(model, batch, self.layer)
        with torch.no_grad():
            ref = block_output(ctx.reference_model, batch, self.layer)
        return per_sequence_mse(h, ref, label_positions(batch), ctx)
