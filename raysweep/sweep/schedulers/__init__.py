"""Trial schedulers: a scheduler sees each trial's results and answers continue or stop.

``mo_asha`` (``mo_asha.py``): successive halving, asynchronous or synchronous, whose rungs rank
trials by non-dominated sorting over several objectives, each with its own direction;
``rung_ranking.py`` ranks a rung's trials; ``tune_adapter.py`` puts it behind Tune's scheduler
contract; ``restore.py`` rebuilds its rungs from MLflow on resume.
"""

from __future__ import annotations


def make_scheduler(job, constraint=None):
    """The Tune scheduler a job asks for (``sweep.scheduler``), or None for Tune's FIFO;
    ``constraint``: the sweep's ``RetentionConstraint`` (None: every point is feasible)."""
    spec = job.sweep.scheduler
    if spec is None:
        return None
    from raysweep.sweep.schedulers.mo_asha import MOASHARungs
    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    rungs = MOASHARungs(job.sweep.objectives, max_steps=job.unlearn.steps, grace_period=spec.grace_period,
                        reduction_factor=spec.reduction_factor, tie_break=spec.tie_break,
                        rank_by=spec.rank_by, keep_front=spec.keep_front,
                        extrapolate=spec.extrapolate, promotion=spec.promotion,
                        num_trials=job.sweep.num_trials, rung_levels=spec.rung_levels,
                        stratify=spec.stratify, budget=spec.budget, tie_metrics=spec.tie_metrics)
    return tune_scheduler(rungs, constraint=constraint, max_concurrent=job.sweep.max_concurrent,
                          num_trials=job.sweep.num_trials)
