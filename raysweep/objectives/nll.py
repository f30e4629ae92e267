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
    """PO / IDK: NLL of a refusal drawn from TOFU's list, in place of the forget answer."""

    name = "idk"
    needs_idk = True

    def __call__(self, model, batch, ctx):
        if "idk_input_ids" not in batch:
            raise KeyError("the idk objective needs refusal batches (idk_input_ids); the data loader did not build them")
        return pooled_nll(*model_token_logprobs(model, batch, prefix="idk_"), ctx)

    def units(self, batch: dict) -> int:
        return int(shifted_labels(batch["idk_labels"])[1].sum())
