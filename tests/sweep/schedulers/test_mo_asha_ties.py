"""MO-ASHA's ``tie_metrics`` (issue 26): trials tied exactly on the objectives at a rung (the same
rank and hypervolume contribution: ROUGE-L on 40 questions leaves slow trials at the target model's
point) are ordered by other evaluation metrics at their arrival, in turn, each in its direction,
before the searcher's order; the live scheduler, its replay and a rebuilt one see the same values."""

import math
import time
from types import SimpleNamespace

import pytest

from raysweep.sweep.schedulers.mo_asha import MOASHARungs

from .test_mo_asha_sync import FORGET_RETAIN, sync

TIED = [0.92, 0.93]  # four trials that have not moved: one point


def _tied_rung(**kw) -> MOASHARungs:
    """5 trials at rung 4 of 16, keep floor(5/2) = 2: m moved (rank 0, kept); a-d tie at TIED with
    forget answer probabilities 0.99, 0.97, NaN (not recorded), 0.98."""
    r = sync(num_trials=5, grace_period=4, reduction_factor=2, **kw)
    for t, v, p in (("a", TIED, 0.99), ("b", TIED, 0.97), ("c", TIED, math.nan), ("d", TIED, 0.98),
                    ("m", [0.5, 0.93], 0.6)):
        r.add(t)
        r.on_result(t, 4, v, tie=[p, 0.99])
    return r


@pytest.mark.parametrize("tie_metrics, ranking", [
    (None, ["m", "a", "b", "c", "d"]),                                       # the searcher's order
    ({"forget_answer_prob": "min"}, ["m", "b", "d", "a", "c"]),              # lower first, NaN last
    ({"forget_answer_prob": "max"}, ["m", "a", "d", "b", "c"]),              # higher first, NaN last
    ({"forget_answer_prob": "min", "retain_answer_prob": "max"}, ["m", "b", "d", "a", "c"]),
])
def test_exact_ties_go_by_the_tie_metrics_in_their_direction(tie_metrics, ranking):
    r = _tied_rung(tie_metrics=tie_metrics)
    assert r.ranking(4) == ranking
    assert r.decided[4] == ranking[:2]


def test_the_second_tie_metric_orders_ties_of_the_first_and_points_still_come_first():
    r = MOASHARungs(dict(FORGET_RETAIN), max_steps=16, grace_period=4, reduction_factor=2,
                    tie_metrics={"p": "min", "q": "max"})                    # asynchronous: ranked on arrival
    for t, v, tie in (("a", TIED, [0.5, 0.1]), ("b", TIED, [0.5, 0.3]), ("c", [0.93, 0.93], [0.0, 1.0]),
                      ("d", [0.2, 0.2], [0.9, 0.0])):
        r.on_result(t, 4, v, tie=tie)
    # c is dominated by a and b whatever its probabilities; d is on the front (rank 0) with them, and
    # the largest hypervolume contribution of the three; b before a on q
    assert r.ranking(4) == ["d", "b", "a", "c"]


def test_trajectory_ranking_breaks_ties_by_them_too():
    r = sync(num_trials=3, grace_period=4, reduction_factor=2, rank_by="trajectory", tie_metrics={"p": "min"})
    for t, p in (("a", 0.9), ("b", 0.8), ("c", 0.85)):
        r.add(t)
        r.on_result(t, 4, TIED, tie=[p])
    assert r.ranking(4) == ["b", "c", "a"] and r.decided[4] == ["b"]


def test_bad_tie_metrics_are_refused():
    for bad in ({}, {"p": "up"}, ["p"], {1: "min"}):
        with pytest.raises(ValueError, match="tie_metrics"):
            sync(num_trials=3, tie_metrics=bad)


def test_the_tune_scheduler_passes_the_tie_metrics_from_the_result():
    """A real Tune ``Trial``: the adapter reads ``eval/<tie metric>`` of each result (NaN if absent)."""
    from ray.tune.experiment import Trial

    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    r = sync(num_trials=3, grace_period=4, reduction_factor=2, tie_metrics={"forget_answer_prob": "min"})
    scheduler = tune_scheduler(r, max_concurrent=3, num_trials=3)
    trials = [Trial("unlearn", stub=True, config={}) for _ in range(3)]
    for trial, p in zip(trials, (0.9, 0.7, None)):
        scheduler.on_trial_add(None, trial)
        result = {"step": 4, "eval/forget": TIED[0], "eval/retain": TIED[1]}
        if p is not None:
            result["eval/forget_answer_prob"] = p
        scheduler.on_trial_result(None, trial, result)
    assert r.decided[4] == [trials[1].trial_id]
    assert r.ranking(4) == [trials[1].trial_id, trials[0].trial_id, trials[2].trial_id]


def mlflow_sweep(trials: dict, ended: dict = (), ties: dict = ()):
    """A sweep in a real sqlite MLflow, as trials with ``eval.every`` log it: a child run per trial
    (started in the dict's order), ``eval/forget``, ``eval/retain``, ``eval/feasible`` and
    ``eval/<tie metric>`` at each step, one event after another; a trial in ``ended`` (trial ->
    (status, raysweep.status_reason)) then closed so (it ended by itself), the others left RUNNING
    (the sweep died)."""
    import tempfile

    from raysweep.sweep import tracking

    uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    c = tracking.client(uri)
    exp = c.create_experiment("raysweep/ties")
    parent = c.create_run(exp, run_name="s", tags={tracking.SWEEP_TAG: "s", tracking.ROLE_TAG: "parent"})
    runs = {}
    for t in trials:
        runs[t] = c.create_run(exp, run_name=t, tags={"mlflow.parentRunId": parent.info.run_id,
                                                      tracking.TRIAL_TAG: t, tracking.SWEEP_TAG: "s"}).info.run_id
        time.sleep(0.002)
    events = sorted(((s, n, t) for n, t in enumerate(trials) for s, _ in trials[t]))
    for s, _, t in events:
        values = dict(trials[t])[s]
        c.log_metric(runs[t], "eval/forget", values[0], step=s)
        c.log_metric(runs[t], "eval/retain", values[1], step=s)
        c.log_metric(runs[t], "eval/feasible", 1.0, step=s)
        for k, v in dict(ties).get(t, {}).get(s, {}).items():
            c.log_metric(runs[t], f"eval/{k}", v, step=s)
        time.sleep(0.002)
        if t in dict(ended) and s == trials[t][-1][0]:
            status, reason = dict(ended)[t]
            c.set_tag(runs[t], "raysweep.status_reason", reason)
            c.set_terminated(runs[t], status=status)
            time.sleep(0.002)
    return c, tracking.find_parent(c, "s", uri)


def test_rungs_rebuilt_for_resume_read_the_tie_metrics_from_mlflow():
    from raysweep.sweep.schedulers.restore import restore_rungs

    c, parent = mlflow_sweep({t: [(4, TIED)] for t in "abcd"},
                             ties={t: {4: {"forget_answer_prob": p}} for t, p in zip("abcd", (0.99, 0.97, 0.98, 0.96))})
    rebuilt = sync(num_trials=4, grace_period=4, reduction_factor=2, tie_metrics={"forget_answer_prob": "min"})
    restore_rungs(rebuilt, c, parent, SimpleNamespace(sweep=SimpleNamespace(constraint=None)))
    assert rebuilt.decided[4] == ["d", "b"]
    plain = sync(num_trials=4, grace_period=4, reduction_factor=2)
    restore_rungs(plain, c, parent, SimpleNamespace(sweep=SimpleNamespace(constraint=None)))
    assert plain.decided[4] == ["a", "b"]                    # without them: the searcher's order
