"""The unlearning engine: task gradients -> synthesis -> clip -> optimizer step (spec 3.1)."""

__all__ = ["UnlearningEngine"]


def __getattr__(name):
    # Lazy: synthesis validation reads raysweep.engine.horizons without importing torch.
    if name == "UnlearningEngine":
        from raysweep.engine.engine import UnlearningEngine

        return UnlearningEngine
    raise AttributeError(f"module 'raysweep.engine' has no attribute {name!r}")
