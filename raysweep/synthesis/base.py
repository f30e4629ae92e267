"""The synthesis contract (spec section 3).

A synthesis method turns separately reduced task gradients into the one vector ``g`` that the
optimizer consumes. ``task_grads[0]`` is the forget-descent gradient ``ĝ_F = ∇L_F`` (the forget
loss *with* its sign, e.g. ``-NLL``); ``task_grads[1:]`` are retain gradients ``g_R = ∇L_R``.
All inputs are already all-reduced across data-parallel ranks (spec 3.2 rule 1) and must not be
modified. Methods that keep state across steps (GRU's EMA, AutoLR's learning rate) expose it
through ``state_dict``/``load_state_dict`` so checkpoints restore it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


from raysweep.registry import Registry
from raysweep.validation import check_hyperparameters
from raysweep.synthesis.primitives import GradList, ReduceSum, identity_reduce

SYNTHESIS: Registry[type["Synthesis"]] = Registry("synthesis method")


@dataclass
class SynthContext:
    """What a method may use besides the gradients: the shard-aware scalar reduction."""

    reduce_sum: ReduceSum = identity_reduce
    step: int = 0


@dataclass
class Synthesis:
    """Base class. Subclasses are dataclasses whose fields are the method's hyperparameters
    (with the spec's defaults) and implement ``combine``."""

    name: ClassVar[str] = ""
    min_tasks: ClassVar[int] = 2
    max_tasks: ClassVar[int] = 2

    # Extra scalars a method wants logged for the current step (e.g. MGDA's weights).
    last_info: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def combine(self, task_grads: list[GradList], ctx: SynthContext) -> GradList:
        raise NotImplementedError

    def __call__(self, task_grads: list[GradList], ctx: SynthContext | None = None) -> GradList:
        n = len(task_grads)
        if not self.min_tasks <= n <= self.max_tasks:
            want = (
                str(self.min_tasks)
                if self.min_tasks == self.max_tasks
                else f"{self.min_tasks}..{self.max_tasks}"
            )
            raise ValueError(f"synthesis '{self.name}' takes {want} task gradients, got {n}")
        self.last_info = {}
        return self.combine(task_grads, ctx or SynthContext())

    # Stateless by default.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def hyperparameters(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]


def register(cls: type[Synthesis]) -> type[Synthesis]:
    return SYNTHESIS.register(cls.name)(cls)


def build_synthesis(name: str, params: dict[str, Any] | None = None) -> Synthesis:
    """Construct a registered method; unknown hyperparameters are a one-line error."""
    cls = SYNTHESIS.get(name)
    params = dict(params or {})
    allowed = cls.hyperparameters()
    for key in params:
        if key not in allowed:
            from raysweep.registry import UnknownNameError

            raise UnknownNameError(f"hyperparameter of synthesis '{name}'", key, allowed)
    check_hyperparameters(cls, params)
    return cls(**params)
