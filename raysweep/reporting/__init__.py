"""How a running trial tells the world what it does (the worker side).

The unlearning loop depends on one small contract, :class:`TrialReporter`:

* ``step(step, metrics)`` - after every optimizer step. Must be cheap: sinks buffer, they never
  make a blocking round trip per step.
* ``report(metrics, checkpoint_dir)`` - the events a scheduler must see: a checkpoint, an
  evaluation, the end, an early stop. These go to Ray (Tune or Train), which records the
  checkpoint for fault recovery; a Ray report costs milliseconds in a Tune function trainable
  but about 2 s in Ray Train 2.60, so it is never per step.
* ``close()`` - flush whatever is buffered (raises if metrics could not be delivered).

Concrete reporters here: :mod:`.ray_report` (Tune / Train) and :mod:`.progress` (throttled progress
lines for the sweep console). The trial runtime adds its own sinks (``raysweep.sweep.sinks``: MLflow)
through a picklable ``sinks(rank)`` factory that :func:`build_reporter` calls inside the worker
process, so the loop imports neither Ray nor MLflow, and this package imports no MLflow code.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence


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


# What the trial runtime gives a worker besides its Ray reporter: ``sinks(rank)`` -> the extra
# reporters of that rank (a picklable callable, called inside the worker's process).
SinkFactory = Callable[[int], Sequence[TrialReporter]]


def build_reporter(sinks: Optional[SinkFactory], rank: int,
                   primary: Optional[TrialReporter] = None) -> TrialReporter:
    """``primary`` (the Ray reporter, on every rank) after this rank's sinks."""
    extra = list(sinks(rank)) if sinks is not None else []
    # Ray last: a scheduler's stop ends the trial inside its report, after MLflow has the event.
    return FanOut(extra + ([primary] if primary is not None else []))
