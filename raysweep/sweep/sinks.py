"""What a sweep trial's rank 0 reports besides Ray: batched per-step metrics to its MLflow run
and throttled progress lines to the sweep console's board.

The trial runtime (:mod:`raysweep.sweep.trial`, or ``raysweep run --ray``) hands a picklable
:class:`ReportingOptions` to the worker as ``WorkerOptions.reporting``. The worker only calls it
(``options.reporting(rank)``) inside its own process, so the worker loop and ``distributed/``
depend on the reporter contract of :mod:`raysweep.reporting` alone, never on MLflow code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raysweep.reporting import TrialReporter
from raysweep.reporting.constraint import RetentionConstraint


@dataclass
class ReportingOptions:
    """Rank 0's MLflow and progress sinks, in picklable form (built on the worker)."""

    mlflow_tracking_uri: Optional[str] = None
    mlflow_run_id: Optional[str] = None
    mlflow_every_steps: int = 10
    mlflow_every_seconds: float = 5.0
    progress_board: Optional[str] = None  # name of the sweep's ProgressBoard actor
    progress_label: str = ""              # the trial id the console prints
    progress_every_seconds: float = 10.0
    tags: Optional[dict] = None           # tags set on the MLflow run at start (e.g. the node)
    # The sweep's constraint: the MLflow sink logs eval/feasible with each evaluation, so every
    # point is judged when it is evaluated, whether or not Ray Train's fit() returns.
    constraint: Optional[RetentionConstraint] = None

    def __post_init__(self):
        if isinstance(self.constraint, dict):
            self.constraint = RetentionConstraint(**self.constraint)

    def __call__(self, rank: int) -> list[TrialReporter]:
        """The sinks of this rank: rank 0 logs, the other ranks only report to Ray."""
        if rank != 0:
            return []
        sinks: list[TrialReporter] = []
        if self.mlflow_run_id:
            from raysweep.sweep.mlflow_log import MlflowStepLogger

            sinks.append(MlflowStepLogger(self.mlflow_tracking_uri, self.mlflow_run_id,
                                          every_steps=self.mlflow_every_steps,
                                          every_seconds=self.mlflow_every_seconds, tags=self.tags,
                                          constraint=self.constraint))
        if self.progress_board:
            from raysweep.reporting.progress import ProgressPoster

            sinks.append(ProgressPoster(self.progress_board, self.progress_label,
                                        every_seconds=self.progress_every_seconds))
        return sinks
