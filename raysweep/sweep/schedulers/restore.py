"""Rebuilding MO-ASHA's rungs on ``raysweep resume`` from what MLflow recorded: every evaluation
along the run (``eval/<objective>`` at its step, ``eval/feasible``) in the order it was logged, and
the trials the scheduler stopped (``raysweep.stopped_by``), which stay stopped."""

from __future__ import annotations

from raysweep.reporting.constraint import recorded_feasible
from raysweep.sweep import tracking


def restore_rungs(rungs, c, parent, job) -> int:
    """Fill ``rungs`` (a fresh ``MOASHARungs``); returns how many evaluations were replayed."""
    events, stopped = [], {}
    constrained = job.sweep.constraint is not None
    for run in tracking.child_runs(c, parent):
        trial = run.data.tags.get(tracking.TRIAL_TAG)
        if trial is None:
            continue
        histories = [{m.step: m for m in c.get_metric_history(run.info.run_id, f"eval/{k}")} for k in rungs.objectives]
        feasible = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "eval/feasible")}
        for step in sorted(set.intersection(*(set(h) for h in histories)) if histories else ()):
            logged = max(h[step].timestamp for h in histories)
            events.append((logged, trial, step, [h[step].value for h in histories],
                           recorded_feasible(feasible.get(step), constrained)))
        stopped_at = run.data.tags.get("raysweep.stopped_at_rung")
        if run.data.tags.get("raysweep.stopped_by") == "mo_asha":
            stopped[trial] = int(stopped_at) if stopped_at else 0
    for _, trial, step, values, ok in sorted(events, key=lambda e: (e[0], e[1], e[2])):
        rungs.on_result(trial, step, values, ok, decide=False)
    rungs.stopped.update(stopped)
    return len(events)
