"""Optuna behind Ray Tune, with real constraints and honest trial states."""

from __future__ import annotations

import math

from raysweep.reporting.constraint import CONSTRAINT_KEY
from raysweep.sweep.space import SearchSpace


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def make_sampler(name: str, seed: int, space: SearchSpace | None = None, grid_points=None):
    import optuna

    if name == "grid":
        from raysweep.sweep.grid import grid_values, make_grid_sampler

        return make_grid_sampler(grid_values(space, grid_points), seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_searcher(space: SearchSpace, objectives: dict[str, str], sampler: str, seed: int, constrained: bool,
                  warm_trials: tuple = (), grid_points=None):
    """``warm_trials``: finished trials of an earlier sweep (``sweep/warm_start.py``) added to the
    study before its first suggestion; the sampler's seed moves on by their count so a seeded
    random start-up does not redraw the earlier sweep's first points."""
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        """Sets the trial's retention constraint (``trial.set_constraint``) before telling Optuna,
        and tells failed or early-stopped trials as FAIL/PRUNED instead of a list of Nones."""

        def _setup_study(self, mode):
            super()._setup_study(mode)
            if warm_trials and not self._ot_study.trials:
                self._ot_study.add_trials(list(warm_trials))

        def on_trial_complete(self, trial_id, result=None, error=False):
            from optuna.trial import TrialState

            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            if constrained and result:
                # Unknown (a NaN or missing constraint metric) is violated: Optuna would count a
                # trial without constraint values as feasible.
                margin = result.get(CONSTRAINT_KEY)
                ot_trial.set_constraint("retention", float(margin) if finite(margin) else math.inf)
            values = [result.get(m) for m in self.metric] if result else None
            if values is None or not all(finite(v) for v in values):
                state = TrialState.FAIL if error else TrialState.PRUNED
                last = {m: result.get(f"eval/{m}") for m in self.metric} if result else {}
                if state == TrialState.PRUNED and last and all(finite(v) for v in last.values()):
                    # Stopped by the scheduler: its last evaluation along the run, for the record
                    # (Optuna takes no values with PRUNED in a multi-objective study).
                    ot_trial.set_user_attr("last_values", {m: float(v) for m, v in last.items()})
                    ot_trial.set_user_attr("pruned_at_step", int(result.get("step", 0)))
                self._ot_study.tell(ot_trial, None, state=state)
                self._completed_trials.add(trial_id)
                return None
            return super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(
        space=space.define_by_run,
        metric=list(objectives),
        mode=[objectives[m] for m in objectives],
        sampler=make_sampler(sampler, seed + len(warm_trials), space, grid_points),
    )
