"""Gradient synthesis methods (spec 3-7), registered by name in ``SYNTHESIS``."""

from raysweep.synthesis.base import SYNTHESIS, Synthesis, SynthContext, build_synthesis
from raysweep.synthesis import graddiff, gru, mgda, ngdiff, pcgrad_r, sago  # noqa: F401  (register)
from raysweep.synthesis.diagnostics import step_diagnostics

__all__ = ["SYNTHESIS", "Synthesis", "SynthContext", "build_synthesis", "step_diagnostics"]
