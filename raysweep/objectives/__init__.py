"""Unlearning objectives (losses to minimise), registered by name in ``OBJECTIVES``."""

from raysweep.objectives.base import OBJECTIVES, Objective, ObjectiveContext, build_objective
from raysweep.objectives import dpo, kl, nll, npo, rmu, token_weighted, uce  # noqa: F401  (register)

__all__ = ["OBJECTIVES", "Objective", "ObjectiveContext", "build_objective"]
