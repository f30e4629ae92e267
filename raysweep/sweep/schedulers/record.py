"""What a sweep records when its scheduler stops a trial: the MLflow child run ends FINISHED (its
evaluations along the run stay candidates on the front) with the reason, and Optuna is told the
trial was PRUNED with its last values (``sweep/searcher.py``)."""

from __future__ import annotations


def stopped_trial_callback(tracking_uri: str, parent_run_id: str, experiment_id: str, rungs):
    from ray.tune import Callback

    from raysweep.sweep import tracking

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
            c.set_tag(child.info.run_id, "raysweep.status_reason",
                      f"stopped by mo_asha at step {step} (rung {rung}): dominated by the trials ahead of it")
            c.set_tag(child.info.run_id, "raysweep.stopped_by", "mo_asha")
            c.set_tag(child.info.run_id, "raysweep.stopped_at_rung", str(rung))
            c.set_tag(child.info.run_id, "raysweep.stopped_at_step", str(step))
            c.set_terminated(child.info.run_id, status="FINISHED")

    return StoppedTrialRecorder()
