"""The unlearning engine: task gradients -> synthesis -> clip -> optimizer step (spec 3.1)."""

from raysweep.engine.engine import UnlearningEngine

__all__ = ["UnlearningEngine"]
