"""Likelihood objectives: GA (spec 2.1), retain NLL (2.2), IDK / PO (2.6)."""

from __future__ import annotations

from dataclasses import dataclass

from raysweep.objectives.base import Objective, model_token_logprobs, pooled_nll, register, shifted_labels


@register
@dataclass
class GA(Objective):
    """Gradient ascent: ``L = -NLL(B_f)``."""

    name = "ga"

    def __call__(self, model, batch, ctx):
        return -pooled_nll(*model_token_logprobs(model, batch), ctx)


@register
@dataclass
class NLL(Objective):
    """Retain NLL: ``L = NLL(B_r)``, the pooled token mean."""

    name = "nll"
    role = "retain"

    def __call__(self, model, batch, ctx):
        return pooled_nll(*model_token_logprobs(model, batch), ctx)


@register
@dataclass
class IDK(Objective):
    """PO / IDK (spec 2.6): NLL of a refusal drawn from TOFU's list, in place of the forget answer.

    ``pooled`` (default, as TOFU computes it): the refusal batch and the retain batch are one
    batch with one token mean, ``Σ_{refusals ∪ retain} ℓ_t / (N_refusal + N_retain)``. The
    engine divides this task and the retain NLL by the combined token count (``pools_with``),
    so GradDiff with γ = α = 1 gives exactly that mean's gradient; the logged forget and
    retain losses are then the two parts of it. ``pooled: false`` gives each its own mean.
    """

    name = "idk"
    needs_idk = True
    pooled: bool = True

    def __call__(self, model, batch, ctx):
        if "idk_input_ids" not in batch:
            raise KeyError("the idk objective needs refusal batches (idk_input_ids); the data loader did not build them")
        return pooled_nll(*model_token_logprobs(model, batch, prefix="idk_"), ctx)

    def units(self, batch: dict) -> int:
        return int(shifted_labels(batch["idk_labels"])[1].sum())

    def pools_with(self, retain: Objective) -> bool:
        if self.pooled and not isinstance(retain, NLL):
            raise ValueError(
                f"idk.pooled: true pools the refusals with the retain NLL (spec 2.6), but the first retain "
                f"objective is '{retain.name}' (put nll first, or set pooled: false)")
        return self.pooled
