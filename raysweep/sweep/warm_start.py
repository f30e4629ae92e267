"""``raysweep launch JOB --warm-start SWEEP``: the finished trials of an earlier sweep in the same
MLflow become completed trials of the new Optuna study, so a widened space or an added method does
not pay again for what was already measured.

Each earlier trial's parameters (MLflow params of its child run, as strings) are replayed through
the *new* search space's define-by-run function: every parameter the new space asks for must be
there and inside its new distribution, else the launch stops with a one-line error naming the
trial, the parameter and what the new space allows.
"""

from __future__ import annotations

import math
from typing import Any

from raysweep.sweep import tracking
from raysweep.sweep.searcher import CONSTRAINT_KEY
from raysweep.sweep.space import SearchSpace


class WarmStartError(tracking.TrackingError):
    """The earlier sweep does not fit the new search space or objectives; one line."""


class _Replay:
    """Answers ``suggest_*`` from an earlier trial's recorded parameters, collecting Optuna
    distributions as the new space defines them."""

    def __init__(self, recorded: dict[str, Any], trial: str, sweep: str):
        self.recorded, self.trial, self.sweep = recorded, trial, sweep
        self.params: dict[str, Any] = {}
        self.distributions: dict = {}
        self.user_attrs: dict[str, Any] = {}

    def _take(self, name: str, dist, convert):
        if name not in self.recorded:
            raise WarmStartError(f"--warm-start {self.sweep}: trial {self.trial} has no value for {name!r} "
                                 f"(the search spaces differ: the new one asks for it)")
        raw = self.recorded[name]
        try:
            value = convert(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or not dist._contains(dist.to_internal_repr(value)):
            raise WarmStartError(f"--warm-start {self.sweep}: trial {self.trial}: {name}={raw} is not allowed by "
                                 f"the new search space ({_describe(dist)})")
        self.params[name], self.distributions[name] = value, dist
        return value

    def suggest_categorical(self, name, choices):
        from optuna.distributions import CategoricalDistribution

        by_text = {str(c): c for c in choices}
        return self._take(name, CategoricalDistribution(choices), lambda raw: by_text.get(str(raw)))

    def suggest_float(self, name, low, high, log=False):
        from optuna.distributions import FloatDistribution

        return self._take(name, FloatDistribution(low, high, log=log), float)

    def suggest_int(self, name, low, high, log=False):
        from optuna.distributions import IntDistribution

        def as_int(raw):
            f = float(raw)
            return int(f) if f.is_integer() else None

        return self._take(name, IntDistribution(low, high, log=log), as_int)

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def _describe(dist) -> str:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(str, dist.choices))
    return f"[{dist.low}, {dist.high}]{' log' if getattr(dist, 'log', False) else ''}"


def earlier_trials(c, tracking_uri: str, sweep: str, space: SearchSpace, objectives: dict[str, str]) -> list:
    """The earlier sweep's finished trials as Optuna ``FrozenTrial`` s for the new study."""
    from optuna.trial import TrialState, create_trial

    parent = tracking.find_parent(c, sweep, tracking_uri)
    theirs = tracking.parent_objectives(parent)
    if set(theirs) != set(objectives) or any(theirs[k] != objectives[k] for k in objectives):
        raise WarmStartError(f"--warm-start {sweep}: its objectives {theirs} are not this job's {objectives}")
    constrained = tracking.parent_constrained(parent)
    seeded = []
    for run in sorted(tracking.child_runs(c, parent), key=lambda r: r.info.start_time or 0):
        m = run.data.metrics
        values = [m.get(f"objective/{k}") for k in objectives]
        if run.info.status != "FINISHED" or any(v is None or not math.isfinite(v) for v in values):
            continue  # failed, stopped early or unfinished: nothing measured to reuse
        replay = _Replay(tracking.trial_config(run), run.data.tags.get(tracking.TRIAL_TAG, run.info.run_id), sweep)
        space.define_by_run(replay)
        # A constrained sweep's trial without a margin (its constraint metric was NaN) is violated.
        margin = m.get(CONSTRAINT_KEY, math.inf if constrained else None)
        constraints = {"retention": margin} if margin is not None else None
        seeded.append(create_trial(state=TrialState.COMPLETE, values=values, params=replay.params,
                                   distributions=replay.distributions,
                                   user_attrs={**replay.user_attrs, "warm_start_from": f"{sweep}/{run.info.run_id}"},
                                   constraints=constraints))
    if not seeded:
        raise WarmStartError(f"--warm-start {sweep}: it has no finished trial with objectives to start from")
    return seeded
