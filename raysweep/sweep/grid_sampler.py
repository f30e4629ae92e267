"""Optuna's GridSampler as a sweep runs it (a module of its own: Ray Tune pickles the searcher, with
its sampler, at every checkpoint, so the class must be importable by name)."""

from __future__ import annotations

import optuna


class TuneGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls study.stop() after the last point, which raises outside study.optimize
    (Ray Tune asks and tells); num_trials = grid size already ends the sweep there."""

    def after_trial(self, study, trial, state, values):
        return None
