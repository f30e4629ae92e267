"""The objective contract (spec 1, 2, 7.1, 8.3).

An objective is a loss to **minimise**. Forget objectives carry their own sign (GA is ``-NLL``).
``__call__(model, batch, ctx)`` returns a scalar tensor. A batch is a dict with ``input_ids``,
``attention_mask``, ``labels`` (prompt and padding = -100) and ``index`` (row ids in the split,
used to cache reference log-probs); IDK batches also carry ``idk_*`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from raysweep.lazy_torch import F, torch
from raysweep.registry import Registry, UnknownNameError
from raysweep.validation import check_hyperparameters

OBJECTIVES: Registry[type["Objective"]] = Registry("objective")
IGNORE_INDEX = -100


@dataclass
class ObjectiveContext:
    """Shared, frozen things objectives may need: the pre-unlearning model ``π_ref``."""

    reference_model: Optional[torch.nn.Module] = None
    # When set, the denominator of every pooled mean (tokens, positions or rows) for the task
    # being computed: global units / (ranks x micro-batches). Makes a data-parallel, accumulated
    # gradient equal the gradient of the one big batch, however the units fall across ranks.
    denominator: Optional[float] = None
    # (split, row index) or (split, prefix, tokens, labels) -> per-token log-probs of the
    # reference model on that row's labels.
    _ref_token_logprobs: dict = field(default_factory=dict)

    def normaliser(self, local_units: torch.Tensor | int) -> torch.Tensor | float:
        if self.denominator is not None:
            return self.denominator
        return local_units.clamp_min(1) if isinstance(local_units, torch.Tensor) else max(1, local_units)

    def reference_token_logprobs(
        self, batch: dict, split: str, prefix: str = ""
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp_ref [B, T-1], mask [B, T-1])`` aligned with ``token_logprobs`` of the batch's
        ``prefix`` rows (``""``: the rows themselves, ``"idk_"``: their refusals).

        The reference is frozen, so each row is computed once and cached (spec 2.4). Dataset rows
        are keyed by (split, row index). Refusal rows are keyed by their tokens: the refusal drawn
        for a row depends on (seed, epoch, row) (data/collate.py), so one row index holds
        different refusals over a run.
        """
        rows = {k: batch[prefix + k] for k in ("input_ids", "attention_mask", "labels")}
        if prefix:
            keys = []
            for ids, attn, labels in zip(rows["input_ids"], rows["attention_mask"], rows["labels"]):
                keep = attn.bool()
                keys.append((split, prefix, tuple(ids[keep].tolist()), tuple(labels[keep].tolist())))
        else:
            keys = [(split, int(i)) for i in batch["index"]]
        missing = [n for n, k in enumerate(keys) if k not in self._ref_token_logprobs]
        if missing and self.reference_model is None:
            raise RuntimeError("this objective needs the frozen reference model, but none was given")
        if missing:
            sub = {k: v[missing] for k, v in rows.items()}
            with torch.no_grad():
                logits = self.reference_model(
                    input_ids=sub["input_ids"], attention_mask=sub["attention_mask"]
                ).logits
                logp, mask = token_logprobs(logits.float(), sub["labels"])
            for row, n in enumerate(missing):
                self._ref_token_logprobs[keys[n]] = logp[row][mask[row]].cpu()
        _, mask = shifted_labels(rows["labels"])
        out = torch.zeros(mask.shape, dtype=torch.float32, device=rows["labels"].device)
        for row, key in enumerate(keys):
            out[row][mask[row]] = self._ref_token_logprobs[key].to(out.device)
        return out, mask


@dataclass
class Objective:
    """Base class: subclasses are dataclasses whose fields are hyperparameters (spec defaults)."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = "forget"  # "forget", "retain" or "any"
    needs_reference: ClassVar[bool] = False
    needs_idk: ClassVar[bool] = False

    def __call__(self, model, batch: dict, ctx: ObjectiveContext) -> torch.Tensor:
        raise NotImplementedError

    def units(self, batch: dict) -> int:
        """How many units this objective averages over in ``batch`` (label tokens by default)."""
        return int(shifted_labels(batch["labels"])[1].sum())

    def pools_with(self, retain: "Objective") -> bool:
        """Whether this forget objective and the first retain objective are *one* mean over both
        batches pooled (spec 2.6: TOFU's IDK concatenates refusals and retain rows). The engine
        then divides both tasks by their combined global unit count, so γ = α = 1 GradDiff is
        the gradient of that single mean."""
        return False

    def trainable_filter(self, model) -> Optional[list[str]]:
        """Names of the only parameters that may train (RMU), or None for all."""
        return None

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]


def register(cls: type[Objective]) -> type[Objective]:
    return OBJECTIVES.register(cls.name)(cls)


def build_objective(name: str, params: dict[str, Any] | None = None) -> Objective:
    cls = OBJECTIVES.get(name)
    params = dict(params or {})
    for key in params:
        if key not in cls.hyperparameters():
            raise UnknownNameError(f"hyperparameter of objective '{name}'", key, cls.hyperparameters())
    check_hyperparameters(cls, params)
    return cls(**params)


# ---- token-level helpers shared by every objective --------------------------------------------


def shifted_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token targets ``labels[:, 1:]`` and their mask (label != -100)."""
    target = labels[:, 1:]
    return target, target != IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log π(y_t | ·)`` for each label token, shape [B, T-1], and the label mask."""
    target, mask = shifted_labels(labels)
    logits = logits[:, :-1].float()
    safe = target.clamp_min(0)
    logp = torch.gather(F.log_softmax(logits, dim=-1), -1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def model_token_logprobs(model, batch: dict, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch[prefix + "input_ids"], attention_mask=batch[prefix + "attention_mask"]).logits
    return token_logprobs(logits, batch[prefix + "labels"])


def pooled_nll(logp: torch.Tensor, mask: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    """``NLL(B)``: the mean of -log p over all label tokens of the batch pooled (HF convention)."""
    return -(logp * mask).sum() / ctx.normaliser(mask.sum())


def sequence_sums(logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S(z) = -Σ_t log p_t`` per row and the number of label tokens ``T_z``."""
    return -(logp * mask).sum(-1), mask.sum(-1).clamp_min(1)
