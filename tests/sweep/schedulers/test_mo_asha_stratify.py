"""MO-ASHA's ``stratify`` (issue 26): a rung keeps the best 1/reduction_factor of all its trials
and, beside them, the best 1/reduction_factor (at least one) of each method's trials, so a method
whose trade-off comes late (SAGO's retention-first start) is not judged against faster ones alone."""

import random
from types import SimpleNamespace

import numpy as np
import pytest

from raysweep.sweep.schedulers.mo_asha import CONTINUE, PAUSE, STOP, MOASHARungs

from .test_mo_asha_sync import FORGET_RETAIN, _bench, _random_trials


def rungs(**kw):
    return MOASHARungs(dict(FORGET_RETAIN), max_steps=kw.pop("max_steps", 16), grace_period=4, reduction_factor=2,
                       **kw)


def _six_at_rung_4(r: MOASHARungs) -> list[str]:
    """Four graddiff trials, each dominating the next and every sago point, and two sago ones (s1
    dominates s2): ranked g1 g2 g3 g4 s1 s2. Returns the decisions in arrival order."""
    arrivals = [("g1", "graddiff", [0.20, 0.90]), ("g2", "graddiff", [0.30, 0.85]), ("s1", "sago", [0.80, 0.70]),
                ("g3", "graddiff", [0.40, 0.80]), ("s2", "sago", [0.85, 0.65]), ("g4", "graddiff", [0.50, 0.75])]
    return [r.on_result(t, 4, v, group=g) for t, g, v in arrivals]


def test_a_synchronous_rung_keeps_the_overall_cut_and_the_best_of_each_method():
    """Worked: 6 trials at rung 4, keep floor(6/2) = 3 overall (g1 g2 g3: every graddiff point
    dominates every sago one); stratified, also floor(2/2) = 1 of sago's two - s1, its better one
    (it dominates s2) - and floor(4/2) = 2 of graddiff's, already kept. Best first."""
    plain = rungs(num_trials=6, promotion="synchronous")
    _six_at_rung_4(plain)
    assert plain.decided[4] == ["g1", "g2", "g3"]
    strat = rungs(num_trials=6, promotion="synchronous", stratify="method")
    assert _six_at_rung_4(strat) == [PAUSE] * 5 + [STOP]       # g4 completes the rung, below both cuts
    assert strat.decided[4] == ["g1", "g2", "g3", "s1"]
    assert strat.groups == {"g1": "graddiff", "g2": "graddiff", "s1": "sago", "g3": "graddiff", "s2": "sago",
                            "g4": "graddiff"}


def test_an_asynchronous_rung_lets_the_best_of_a_method_go_on_on_arrival():
    """Stop variant, keep ceil(n/2) of those at the rung so far: s1 arrives third behind two
    better graddiff trials. Plain, it is cut (3rd of 3, keep 2); stratified it is the best of its
    method's one (ceil(1/2) = 1) and goes on, while s2, 2nd of sago's two, stops; g2 is 2nd of 2
    both overall and in graddiff (keep 1) and stops either way."""
    plain, strat = rungs(), rungs(stratify="method")
    for r, expect in ((plain, [CONTINUE, STOP, STOP, STOP, STOP, STOP]),
                      (strat, [CONTINUE, STOP, CONTINUE, STOP, STOP, STOP])):
        assert _six_at_rung_4(r) == expect
    # a trial whose group is unknown (no ``method`` in its config) meets the overall cut alone,
    # not a group of its own
    r = rungs(stratify="method")
    assert r.on_result("a", 4, [0.2, 0.9], group="graddiff") == CONTINUE
    assert r.on_result("c", 4, [0.9, 0.1]) == STOP
    with pytest.raises(ValueError, match="stratify"):
        rungs(stratify="")


@pytest.mark.parametrize("seed", range(3))
def test_stratified_synchronous_decisions_do_not_depend_on_arrival_order(seed):
    """As ``promotion: synchronous`` alone (test_mo_asha_sync.py): 16 trajectories in 3 methods,
    12 random timings, one outcome; and stratifying keeps at least as many trials as not."""
    bench = _bench()
    rng = np.random.default_rng(seed)
    trials = _random_trials(rng, 16, 8, 4)
    configs = [{"method": ("graddiff", "sago", "npo")[i % 3]} for i in range(16)]
    settings = {"grace_period": 4, "reduction_factor": 2, "rank_by": "last", "promotion": "synchronous",
                "rung_levels": [4, 12], "stratify": "method"}
    outcomes = set()
    timing = random.Random(seed)
    for _ in range(12):
        seconds = [[timing.uniform(0.2, 3.0) for _ in t] for t in trials]
        _, _, spent, hv = bench.replay(trials, FORGET_RETAIN, [1.0, 0.0], settings, 32, workers=2, seconds=seconds,
                                       configs=configs)
        outcomes.add((spent, round(hv, 12)))
    assert len(outcomes) == 1, outcomes
    plain = bench.replay(trials, FORGET_RETAIN, [1.0, 0.0], {**settings, "stratify": None}, 32, configs=configs)
    assert next(iter(outcomes))[0] >= plain[2]


def test_resume_rebuilds_each_trials_method_from_mlflow(tmp_path):
    """``restore_rungs`` reads each trial's method from its ``raysweep.config`` tag (a real sqlite
    MLflow holding a synthetic sweep of 8 trials in 4 methods): the rebuilt rungs decide as rungs
    fed the same evaluations live."""
    from raysweep.sweep import tracking
    from raysweep.sweep.schedulers.restore import restore_rungs

    from ...synthetic_sweep import OBJECTIVES, synthetic_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synthetic_sweep(uri, "s", 8)
    c = tracking.client(uri)
    parent = tracking.find_parent(c, "s", uri)
    for r in tracking.child_runs(c, parent):  # a sweep that died: its runs closed KILLED, none ended by itself
        c.set_terminated(r.info.run_id, status="KILLED")
    job = SimpleNamespace(sweep=SimpleNamespace(constraint=None))
    rebuilt = MOASHARungs(dict(OBJECTIVES), max_steps=20, grace_period=5, promotion="synchronous", num_trials=8,
                          stratify="method")
    assert restore_rungs(rebuilt, c, parent, job) == 32
    runs = tracking.child_runs(c, parent)
    assert rebuilt.groups == {r.data.tags[tracking.TRIAL_TAG]: r.data.tags["raysweep.method"] for r in runs}
    assert len(set(rebuilt.groups.values())) == 4
    live = MOASHARungs(dict(OBJECTIVES), max_steps=20, grace_period=5, promotion="synchronous", num_trials=8,
                       stratify="method")
    started = [r.data.tags[tracking.TRIAL_TAG] for r in sorted(runs, key=lambda r: r.info.start_time)]
    assert list(rebuilt.created) == started  # the searcher's order, which breaks ties
    for t in started:
        live.add(t)
    for r in runs:  # every trial's arrival at rung 5 decides it
        hist = [{m.step: m.value for m in c.get_metric_history(r.info.run_id, f"eval/{k}")} for k in OBJECTIVES]
        live.on_result(r.data.tags[tracking.TRIAL_TAG], 5, [h[5] for h in hist], group=r.data.tags["raysweep.method"])
    assert rebuilt.decided[5] == live.decided[5]
    assert {rebuilt.groups[t] for t in live.decided[5]} == set(rebuilt.groups.values())  # each method's best kept


def test_the_tune_scheduler_reads_the_group_from_the_trials_config():
    """The adapter passes ``trial.config[stratify]`` (the sampler's ``method``) with each result
    (a real Tune ``Trial``)."""
    from ray.tune.experiment import Trial

    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    r = rungs(stratify="method")
    scheduler = tune_scheduler(r)
    trial = Trial("unlearn", stub=True, config={"method": "sago", "method.sago.alpha": 0.5})
    scheduler.on_trial_result(None, trial, {"step": 4, "eval/forget": 0.5, "eval/retain": 0.9})
    assert r.groups == {trial.trial_id: "sago"}
    unstratified = rungs()
    tune_scheduler(unstratified).on_trial_result(None, trial, {"step": 4, "eval/forget": 0.5, "eval/retain": 0.9})
    assert unstratified.groups == {}
