"""What a sweep records when its scheduler stops a trial: the MLflow child run ends FINISHED (its
evaluations along the run stay candidates on the front) with the reason, and Optuna is told the
trial was PRUNED with its last values (``sweep/searcher.py``).

The point the trial was stopped at is recorded here too when the trial did not get to record it:
the scheduler stops a trial inside its ``tune.report``, and the trial's own record of that
checkpoint (``sweep/trial.py`` ``record_point``, an MLflow call after the report) races the end of
its actor. The driver has Tune's persisted checkpoint of that report and records it instead."""

from __future__ import annotations

import os


def stopped_trial_callback(tracking_uri: str, parent_run_id: str, experiment_id: str, rungs, job=None):
    from ray.tune import Callback

    from raysweep.sweep import tracking
    from raysweep.sweep.tracking import checkpoint_tag

    class StoppedTrialRecorder(Callback):
        def __getstate__(self):  # Tune pickles callbacks into its state; resume installs a new one
            return {}

        def on_trial_complete(self, iteration, trials, trial, **info):
            rung = rungs.stopped.get(trial.trial_id)
            if rung is None:
                return
            c = tracking.client(tracking_uri)
            child = tracking.find_child(c, parent_run_id, experiment_id, trial.trial_id)
            if child is None:
                return
            step = int((trial.last_result or {}).get("step", rung))
            # First the point (an artifact upload may take a while), then the tags and the end
            # together: the run never shows "stopped" while it is still RUNNING for long.
            if job is not None and checkpoint_tag(step) not in child.data.tags:
                record_stopped_point(c, job, child.info.run_id, step, trial)
            c.set_tag(child.info.run_id, "raysweep.status_reason",
                      f"stopped by mo_asha at step {step} (rung {rung}): dominated by the trials ahead of it")
            c.set_tag(child.info.run_id, "raysweep.stopped_by", "mo_asha")
            c.set_tag(child.info.run_id, "raysweep.stopped_at_rung", str(rung))
            c.set_tag(child.info.run_id, "raysweep.stopped_at_step", str(step))
            c.set_terminated(child.info.run_id, status="FINISHED")

    return StoppedTrialRecorder()


def record_stopped_point(c, job, run_id: str, step: int, trial) -> None:
    """The checkpoint Tune persisted with the trial's last report (the stopped point), recorded
    as the trial would have (``raysweep.checkpoint.step.<step>``; an artifact copy when
    ``sweep.checkpoint`` is ``artifact``)."""
    from raysweep.sweep.trial import record_point

    path = getattr(getattr(trial, "checkpoint", None), "path", None)
    result = trial.last_result or {}
    if path and os.path.isdir(path) and int(result.get("step", -1)) == step:
        record_point(c, job, run_id, step, path, result)

