"""raysweep: parallel sweeps and Pareto search for LLM unlearning.

The sub-packages are layers, each importing only from those below it (docs/architecture.md; the
import-linter contract in pyproject.toml, checked by tests/test_architecture.py). Heavy
dependencies (torch, transformers, ray, mlflow) are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
