"""raysweep: parallel sweeps and Pareto search for LLM unlearning.

Data flows one way through the sub-packages:
job YAML -> ``spec`` -> (Tune driver) -> (Train workers) -> ``engine`` ->
``objectives`` -> ``synthesis`` -> optimizer -> ``evaluation`` -> (MLflow).
Heavy dependencies (torch, transformers, ray) are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
