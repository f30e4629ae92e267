"""MO-ASHA's promotion variant in a real sweep (issue 26): a trial below the cut is PAUSED by Tune,
a later one starts in its slot, the paused trial resumes from its checkpoint when promoted and
its evaluations are the ones it makes without pausing (the same trial of a FIFO sweep); the
sweep ends with the never-promoted ones recorded as stopped. Real local Ray, Optuna, sqlite MLflow."""

import json

import pytest
import yaml

from .test_sweep import raysweep
from .test_trajectory import trajectory_job


def _histories(uri: str, sweep: str) -> dict:
    """trial's sampled lr -> ({step: (forget, retain)} of its evaluations, its tags)."""
    from raysweep.sweep import tracking

    c = tracking.client(uri)
    parent = tracking.find_parent(c, sweep, uri)
    out = {}
    for run in tracking.child_runs(c, parent):
        keys = ("eval/forget_answer_loss", "eval/retain_answer_loss")
        hist = [{m.step: m.value for m in c.get_metric_history(run.info.run_id, k)} for k in keys]
        lr = next(v for k, v in run.data.params.items() if k.endswith("lr"))
        out[lr] = ({s: (hist[0][s], hist[1][s]) for s in hist[0] if s in hist[1]}, run.data.tags, run.info.status)
    return out


def _sweeps(tmp, tofu_dir, shared_cache, schedulers: dict, **job) -> dict:
    """One real sweep per name (``schedulers``: name -> ``sweep.scheduler`` or None for FIFO), each
    with its own sqlite MLflow; name -> ``_histories`` of its trials."""
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    got = {}
    for name, scheduler in schedulers.items():
        path = trajectory_job(tmp, tofu_dir, shared_cache, name=name, scheduler=False, **job)
        raw = yaml.safe_load(path.read_text())
        raw["sweep"]["tracking_uri"] = f"sqlite:///{tmp / (name + '.db')}"
        if scheduler:
            raw["sweep"]["scheduler"] = scheduler
        path.write_text(yaml.safe_dump(raw))
        prepare(load_job(path))
        res = raysweep("launch", str(path), "--name", name, cwd=tmp)
        assert res.returncode == 0, res.stderr[-3000:]
        got[name] = _histories(raw["sweep"]["tracking_uri"], name)
    return got


@pytest.fixture(scope="module")
def paused_and_fifo(tmp_path_factory, tofu_dir, shared_cache):
    schedulers = {"fifo": None, **{p: {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2, "promotion": p}
                                   for p in ("pause", "synchronous")},
                  "budget": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2, "promotion": "synchronous",
                             "budget": 0.8}}
    return _sweeps(tmp_path_factory.mktemp("promotion"), tofu_dir, shared_cache, schedulers, trials=3)


@pytest.mark.slow  # four real sweeps (~200 s on the shared 2-core CPU); the rung logic is in test_mo_asha.py
def test_a_paused_trial_resumes_from_its_checkpoint_exactly_and_the_others_end_stopped(paused_and_fifo):
    fifo, paused = paused_and_fifo["fifo"], paused_and_fifo["pause"]
    assert set(paused) == set(fifo) and len(fifo) == 3  # the random sampler: the same three trials
    resumed = [lr for lr, (_, tags, _) in paused.items() if "raysweep.resumed_from_step" in tags]
    stopped = [lr for lr, (_, tags, _) in paused.items() if tags.get("raysweep.stopped_by") == "mo_asha"]
    # The first trial at the rung (step 2) waits for company (floor(1/2) = 0 may go on); the second,
    # worse, promotes it: it resumes from its step-2 checkpoint (before the third trial starts),
    # waits again at the next rung (step 4) and is stopped there at the sweep's end.
    assert resumed and stopped, {lr: tags for lr, (_, tags, _) in paused.items()}
    for lr, (hist, tags, status) in paused.items():
        assert status == "FINISHED", (lr, status)
        # every evaluation the trial made equals the same trial's in FIFO (bitwise on CPU), a
        # resumed one's after its pause included
        assert hist and all(hist[s] == fifo[lr][0][s] for s in hist), (lr, hist, fifo[lr][0])
    for lr in resumed:
        assert max(paused[lr][0]) > int(paused[lr][1]["raysweep.resumed_from_step"])
    for lr in stopped:
        assert max(paused[lr][0]) < max(fifo[lr][0])
        assert json.loads(paused[lr][1]["raysweep.stopped_at_step"]) == max(paused[lr][0])


@pytest.mark.slow  # shares the module's sweeps
def test_synchronous_promotion_decides_the_rung_once_every_trial_reached_it(paused_and_fifo):
    """``promotion: synchronous`` in a real sweep (one trial at a time): each trial pauses at the
    rung (step 2) until the third arrives; then the one the rung logic ranks first among the three
    FIFO step-2 points (fed in another order) is the only one trained past step 2, each trial's
    evaluations are FIFO's, and the other two end stopped by mo_asha at step 2."""
    from raysweep.sweep.schedulers.mo_asha import MOASHARungs

    from .test_trajectory import OBJECTIVES

    fifo, sync = paused_and_fifo["fifo"], paused_and_fifo["synchronous"]
    assert set(sync) == set(fifo) and len(fifo) == 3
    rungs = MOASHARungs(dict(OBJECTIVES), max_steps=6, grace_period=2, reduction_factor=2,
                        promotion="synchronous", num_trials=3)
    for lr in sorted(fifo, reverse=True):
        rungs.on_result(lr, 2, [fifo[lr][0][2][0], fifo[lr][0][2][1]])
    winner, = rungs.decided[2]
    for lr, (hist, tags, status) in sync.items():
        assert status == "FINISHED", (lr, status)
        assert hist and all(hist[s] == fifo[lr][0][s] for s in hist), (lr, hist, fifo[lr][0])
        if lr == winner:
            assert max(hist) == max(fifo[lr][0]) and "raysweep.stopped_by" not in tags, (lr, hist, tags)
        else:
            assert max(hist) == 2 and tags.get("raysweep.stopped_by") == "mo_asha", (lr, hist, tags)


@pytest.mark.slow  # shares the module's sweeps
def test_a_budget_resumes_the_best_waiting_trial_to_its_end_in_a_real_sweep(paused_and_fifo):
    """``budget: 0.8`` in a real sweep (issue 26): 3 trials x 6 steps = 18; when the last rung
    (step 4) is decided the winner is committed to 6 and the two cut at step 2 to 2 each, so
    0.8 x 18 - 10 = 4.4 steps are left: the better of the two (as the rung logic ranks FIFO's step-2
    points) resumes from its step-2 checkpoint and trains to the end (4 steps), the other ends
    stopped at step 2, and every evaluation equals FIFO's."""
    from raysweep.sweep.schedulers.mo_asha import MOASHARungs

    from .test_trajectory import OBJECTIVES

    fifo, budget = paused_and_fifo["fifo"], paused_and_fifo["budget"]
    assert set(budget) == set(fifo) and len(fifo) == 3
    rungs = MOASHARungs(dict(OBJECTIVES), max_steps=6, grace_period=2, reduction_factor=2,
                        promotion="synchronous", num_trials=3, budget=0.8)
    for lr in sorted(fifo, reverse=True):
        rungs.on_result(lr, 2, list(fifo[lr][0][2]))
    winner, = rungs.decided[2]
    rungs.on_result(winner, 4, list(fifo[winner][0][4]))
    revived, = rungs.revived
    for lr, (hist, tags, status) in budget.items():
        assert status == "FINISHED", (lr, status)
        assert hist and all(hist[s] == fifo[lr][0][s] for s in hist), (lr, hist, fifo[lr][0])
        if lr in (winner, revived):
            assert max(hist) == 6 and "raysweep.stopped_by" not in tags, (lr, hist, tags)
        else:
            assert max(hist) == 2 and tags.get("raysweep.stopped_by") == "mo_asha", (lr, hist, tags)
    assert int(budget[revived][1]["raysweep.resumed_from_step"]) == 2


TWO_METHODS = {"method": {"graddiff": {"alpha": 0.0}, "sago": {"alpha": 1.0}},
               "unlearn": {"lr": {"loguniform": [2e-2, 5e-2]}}}


@pytest.fixture(scope="module")
def stratified_and_fifo(tmp_path_factory, tofu_dir, shared_cache):
    schedulers = {"fifo": None, "stratified": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2,
                                               "promotion": "synchronous", "stratify": "method"}}
    return _sweeps(tmp_path_factory.mktemp("stratified"), tofu_dir, shared_cache, schedulers, trials=4,
                   space=TWO_METHODS)


@pytest.mark.slow  # two real sweeps of 4 trials (~100 s on the shared 2-core CPU)
def test_a_stratified_rung_trains_on_the_best_of_each_method_in_a_real_sweep(stratified_and_fifo):
    """``stratify: method`` end to end (issue 26): the Tune scheduler reads each trial's method from
    its config; the trials trained past each rung (steps 2 and 4) are exactly those the rung logic
    keeps from the FIFO sweep's points and methods - at step 2 the best of all 4 (floor(4/2) = 2)
    and the best of each method - the others end stopped by mo_asha, and every evaluation equals
    FIFO's."""
    from raysweep.sweep.schedulers.mo_asha import MOASHARungs

    from .test_trajectory import OBJECTIVES

    fifo, strat = stratified_and_fifo["fifo"], stratified_and_fifo["stratified"]
    assert set(strat) == set(fifo) and len(fifo) == 4
    methods = {lr: tags["raysweep.method"] for lr, (_, tags, _) in fifo.items()}
    assert set(methods.values()) == {"graddiff", "sago"}, methods
    rungs = MOASHARungs(dict(OBJECTIVES), max_steps=6, grace_period=2, reduction_factor=2, promotion="synchronous",
                        num_trials=4, stratify="method")
    plain = MOASHARungs(dict(OBJECTIVES), max_steps=6, grace_period=2, reduction_factor=2, promotion="synchronous",
                        num_trials=4)
    for lr in sorted(fifo, reverse=True):
        rungs.on_result(lr, 2, list(fifo[lr][0][2]), group=methods[lr])
        plain.on_result(lr, 2, list(fifo[lr][0][2]))
    kept = set(rungs.decided[2])
    assert kept > set(plain.decided[2]), (rungs.decided, plain.decided)  # stratifying kept one more here
    for lr in sorted(kept):  # the second rung (step 4), among those kept at the first
        if lr in rungs.paused:
            rungs.resume(lr)  # promoted: as the scheduler resumes it
        rungs.on_result(lr, 4, list(fifo[lr][0][4]), group=methods[lr])
    finished = set(rungs.decided[4])
    for lr, (hist, tags, status) in strat.items():
        assert status == "FINISHED", (lr, status)
        assert hist and all(hist[s] == fifo[lr][0][s] for s in hist), (lr, hist, fifo[lr][0])
        assert max(hist) == (6 if lr in finished else 4 if lr in kept else 2), (lr, hist, rungs.decided)
        assert (tags.get("raysweep.stopped_by") == "mo_asha") == (lr not in finished), (lr, tags)
