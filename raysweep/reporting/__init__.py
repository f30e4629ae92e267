"""How a running trial tells the world what it does (the worker side).

The unlearning loop depends on one small contract, :class:`TrialReporter`:

* ``step(step, metrics)`` - after every optimizer step. Must be cheap: sinks buffer, they never
  make a blocking round trip per step.
* ``report(metrics, checkpoint_dir)`` - the events a scheduler must see: a checkpoint, an
  evaluation, the end, an early stop. These go to Ray (Tune or Train), which records the
  checkpoint for fault recovery; a Ray report costs milliseconds in a Tune function trainable
  but about 2 s in Ray Train 2.60, so it is never per step.
* ``close()`` - flush whatever is buffered (raises if metrics could not be delivered).

Concrete reporters: :mod:`.ray_report` (Tune / Train), :mod:`.mlflow_log` (batched per-step
metrics), :mod:`.progress` (throttled progress lines for the sweep console).
:func:`build_reporter` assembles them from a picklable :class:`ReportingOptions` inside the
worker process, so the loop itself imports neither Ray nor MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from raysweep.reporting.constraint import RetentionConstraint


class TrialReporter:
    """Base reporter: every hook is a no-op."""

    def step(self, step: int, metrics: dict) -> None:
        pass

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        pass

    def close(self) -> None:
        pass


class CallbackReporter(TrialReporter):
    """``fn(metrics, checkpoint_dir)`` for the events that matter (tests, benchmarks, local runs)."""

    def __init__(self, fn: Callable[[dict, Optional[str]], None]):
        self.fn = fn

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        self.fn(metrics, checkpoint_dir)


class FanOut(TrialReporter):
    """Sends every event to each reporter in order; closes all of them even if one fails."""

    def __init__(self, reporters: Sequence[TrialReporter]):
        self.reporters = [r for r in reporters if r is not None]

    def step(self, step: int, metrics: dict) -> None:
        for r in self.reporters:
            r.step(step, metrics)

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        for r in self.reporters:
            r.report(metrics, checkpoint_dir)

    def close(self) -> None:
        errors = []
        for r in self.reporters:
            try:
                r.close()
            except Exception as err:  # noqa: BLE001 - the others must still flush
                errors.append(err)
        if errors:
            raise errors[0]


def as_reporter(reporter) -> TrialReporter:
    """A reporter, or a plain ``fn(metrics, checkpoint_dir)`` wrapped as one."""
    if reporter is None:
        return TrialReporter()
    if isinstance(reporter, TrialReporter):
        return reporter
    return CallbackReporter(reporter)


@dataclass
class ReportingOptions:
    """What rank 0 of a trial reports besides Ray, in picklable form (built on the worker)."""

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
        if isinstance(self.constraint, dict):  # asdict() (WorkerOptions.to_dict, Ray Train's config) flattens it
            self.constraint = RetentionConstraint(**self.constraint)


def build_reporter(options: Optional[ReportingOptions], rank: int,
                   primary: Optional[TrialReporter] = None) -> TrialReporter:
    """``primary`` (the Ray reporter, on every rank) plus rank 0's MLflow and progress sinks."""
    sinks: list[TrialReporter] = []
    if options is not None and rank == 0:
        if options.mlflow_run_id:
            from raysweep.reporting.mlflow_log import MlflowStepLogger

            sinks.append(MlflowStepLogger(options.mlflow_tracking_uri, options.mlflow_run_id,
                                          every_steps=options.mlflow_every_steps,
                                          every_seconds=options.mlflow_every_seconds, tags=options.tags,
                                          constraint=options.constraint))
        if options.progress_board:
            from raysweep.reporting.progress import ProgressPoster

            sinks.append(ProgressPoster(options.progress_board, options.progress_label,
                                        every_seconds=options.progress_every_seconds))
    # Ray last: a scheduler's stop ends the trial inside its report, after MLflow has the event.
    return FanOut(sinks + ([primary] if primary is not None else []))
