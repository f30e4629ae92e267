"""Reporters whose ``report`` goes to Ray: Tune inside a function trainable, Train inside a
``TorchTrainer`` worker. Only the events that matter reach them (see :mod:`raysweep.reporting`)."""

from __future__ import annotations

import math
from typing import Callable, Optional

from raysweep.reporting import TrialReporter


def ray_safe(metrics: dict) -> dict:
    """Numbers as floats (non-finite as NaN) and strings; anything else dropped."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v) if math.isfinite(float(v)) else float("nan")
        elif isinstance(v, str):
            out[k] = v
    return out


class TuneReporter(TrialReporter):
    """``tune.report`` (a few ms in a function trainable); the checkpoint directory is handed to Tune,
    which copies it into the trial's storage (synchronously) and restores it after a failure."""

    def __init__(self, fixed: Optional[dict] = None,
                 on_checkpoint: Optional[Callable[[int, str, dict], None]] = None):
        self.last_checkpoint: Optional[str] = None  # where Tune persisted the latest checkpoint
        self.fixed = dict(fixed or {})              # added to every report (e.g. the MLflow run id)
        self.on_checkpoint = on_checkpoint          # (step, persisted path, metrics) after each checkpoint

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        from ray import tune

        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        try:
            tune.report({**ray_safe(metrics), **self.fixed}, checkpoint=ckpt)
        finally:
            # Also when a scheduler stops the trial inside tune.report (it ends the trial's thread
            # there, after persisting the checkpoint): the point it was stopped at stays recorded.
            if ckpt is not None:
                self.last_checkpoint = _persisted_path() or checkpoint_dir
                if self.on_checkpoint is not None:
                    self.on_checkpoint(int(metrics.get("step", 0)), self.last_checkpoint, metrics)


def _persisted_path() -> Optional[str]:
    # Ray 2.60 exposes the persisted location only on the session's storage context.
    try:
        from ray.train._internal.session import get_session

        return get_session().storage.checkpoint_fs_path
    except Exception:  # noqa: BLE001 - a newer Ray may move it; the caller falls back
        return None


class TrainReporter(TrialReporter):
    """``ray.train.report`` from every rank of a ``TorchTrainer`` (about 2 s per call in Ray 2.60)."""

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(ray_safe(metrics), checkpoint=ckpt)
