"""Rebuilding MO-ASHA's rungs on ``raysweep resume`` from what MLflow recorded: every evaluation
along the run (``eval/<objective>`` at its step, ``eval/feasible``) in the order it was logged, and
the trials the scheduler stopped (``raysweep.stopped_by``), which stay stopped; the trials that ended
by themselves (their run FINISHED and not stopped by the scheduler, or FAILED by the sweep's early
stop, the retain-loss guard; a run FAILED by an error may be retried), at their end among the
evaluations, as the live sweep learned of it
(a synchronous rung stops waiting for them; the budget counts them where they ended); the
searcher's order (the runs' start times); with ``stratify``, each trial's drawn value of it
(``raysweep.config``); with ``tie_metrics``, their values at each evaluation."""

from __future__ import annotations

from raysweep.reporting.constraint import recorded_feasible
from raysweep.sweep import tracking


def restore_rungs(rungs, c, parent, job) -> int:
    """Fill ``rungs`` (a fresh ``MOASHARungs``); returns how many evaluations were replayed."""
    events, stopped = [], {}
    constrained = job.sweep.constraint is not None
    runs = [r for r in tracking.child_runs(c, parent) if r.data.tags.get(tracking.TRIAL_TAG) is not None]
    # every trial's evaluations in bulk (a request per 100 runs, not one per run and metric: issue 28)
    ids = [r.info.run_id for r in runs]
    ties = list(rungs.tie_metrics or {})
    points = ({k: tracking.metric_points(c, ids, f"eval/{k}") for k in dict.fromkeys([*rungs.objectives, *ties])}
              if ids else {})  # a tie metric that is also an objective is read once
    feasible = tracking.metric_histories(c, ids, "eval/feasible") if ids else {}
    groups = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):  # the searcher's order, as Tune added them
        rungs.add(run.data.tags[tracking.TRIAL_TAG])
    for run in runs:
        trial, run_id = run.data.tags[tracking.TRIAL_TAG], run.info.run_id
        if rungs.stratify:  # the trial's value of the stratifying choice, as the sampler drew it
            groups[trial] = tracking.trial_config(run).get(rungs.stratify)
        histories = [points[k][run_id] for k in rungs.objectives]
        for step in sorted(set.intersection(*(set(h) for h in histories)) if histories else ()):
            logged = max(h[step][1] for h in histories)
            tie = [points[k][run_id].get(step, (float("nan"),))[0] for k in ties]
            events.append((logged, trial, step, [h[step][0] for h in histories],
                           recorded_feasible(feasible[run_id].get(step), constrained), tie))
        stopped_at = run.data.tags.get("raysweep.stopped_at_rung")
        if run.data.tags.get("raysweep.stopped_by") == "mo_asha":
            stopped[trial] = int(stopped_at) if stopped_at else 0
        elif run.info.end_time and (run.info.status == "FINISHED" or (
                run.info.status == "FAILED"
                and run.data.tags.get("raysweep.status_reason", "").startswith(tracking.EARLY_STOP_REASON))):
            events.append((run.info.end_time, trial, None, None, None, None))  # it ended by itself
    for _, trial, step, values, ok, tie in sorted(events, key=lambda e: (e[0], e[1], e[2] is None, e[2] or 0)):
        if step is None:
            rungs.ended(trial)
            continue
        rungs.on_result(trial, step, values, ok, decide=False, group=groups.get(trial), tie=tie)
    rungs.stopped.update(stopped)
    rungs.restored()
    return sum(e[2] is not None for e in events)
