"""MO-ASHA's ``promotion: synchronous`` (successive halving, issue 26): a rung is decided once,
when complete, so the trials trained and the steps spent do not depend on the order in which the
trials arrive; ``rung_levels`` places the rungs."""

import importlib.util
import random

import numpy as np
import pytest

from raysweep.sweep.schedulers.mo_asha import CONTINUE, PAUSE, STOP, MOASHARungs

from ...conftest import REPO

FORGET_RETAIN = {"forget": "min", "retain": "max"}


def sync(**kw):
    return MOASHARungs(dict(FORGET_RETAIN), max_steps=kw.pop("max_steps", 16), promotion="synchronous", **kw)


def _bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", REPO / "benchmarks" / "search_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_rung_waits_for_every_trial_then_promotes_the_best_half_best_first():
    """Worked: 4 trials, rungs at 4 and 8 of 16 steps, keep floor(n/2). Every arrival at rung 4
    pauses until the 4th; the 4th's arrival decides the rung (it is promoted: CONTINUE), the
    paused winner is promoted, the losers wait unpromoted and end as stopped."""
    r = sync(num_trials=4, grace_period=4, reduction_factor=2)
    assert r.milestones == [4, 8]
    assert r.on_result("a", 4, [0.5, 0.8]) == PAUSE
    assert r.on_result("b", 4, [0.6, 0.7]) == PAUSE          # dominated by a
    assert r.on_result("c", 4, [0.9, 0.2]) == PAUSE
    assert r.next_promotion() is None                        # d has not arrived: nothing is decided
    assert r.on_result("d", 4, [0.3, 0.9]) == CONTINUE       # dominates all: rung 4 decided = [d, a]
    assert r.decided == {4: ["d", "a"]}
    assert r.next_promotion() == "a"
    r.resume("a")
    assert r.next_promotion() is None and sorted(r.paused) == ["b", "c"]
    assert r.on_result("d", 8, [0.2, 0.9]) == PAUSE          # rung 8 waits for a
    assert r.on_result("a", 8, [0.1, 0.95]) == CONTINUE      # rung 8: keep floor(2/2) = 1, a dominates d
    assert r.decided[8] == ["a"] and r.next_promotion() is None
    assert sorted(r.stop_paused()) == ["b", "c", "d"]
    assert r.on_result("b", 8, [0.0, 1.0]) == STOP


def test_a_trial_that_ends_by_itself_does_not_hold_its_rung_and_force_settle_frees_a_lost_one():
    r = sync(num_trials=3, grace_period=4, reduction_factor=2)
    assert r.on_result("a", 4, [0.5, 0.8]) == PAUSE
    r.ended("early")                                         # stopped before its first rung (or failed)
    assert r.on_result("b", 4, [0.4, 0.9]) == CONTINUE       # 3 of 3 known: decided, keep floor(2/2) = 1
    assert r.decided[4] == ["b"]
    lost = sync(num_trials=3, grace_period=4, reduction_factor=2)
    lost.on_result("a", 4, [0.5, 0.8]); lost.on_result("b", 4, [0.4, 0.9])
    assert lost.next_promotion() is None                     # the third never reports
    assert lost.force_settle() and lost.next_promotion() == "b"
    with pytest.raises(ValueError, match="num_trials"):
        sync(grace_period=4)


def test_rung_levels_place_the_rungs_and_bad_ones_are_refused():
    r = MOASHARungs(dict(FORGET_RETAIN), max_steps=32, grace_period=4, rung_levels=[4, 12])
    assert r.milestones == [4, 12]
    for bad in ([], [12, 4], [4, 4], [0, 8], [4, 32]):
        with pytest.raises(ValueError, match="rung_levels"):
            MOASHARungs(dict(FORGET_RETAIN), max_steps=32, rung_levels=bad)


def _random_trials(rng: np.random.Generator, n: int, evals: int, every: int) -> list:
    """Unlearning-like trajectories: forget falls, retain falls with it at a trial's own rates,
    with noise, so rungs have fronts of several trials and late movers."""
    trials = []
    for _ in range(n):
        f_rate, r_rate = rng.uniform(0.01, 0.2), rng.uniform(0.0, 0.1)
        f, r, pts = 0.9, 0.93, []
        for i in range(evals):
            f = float(np.clip(f * (1 - f_rate) + rng.normal(0, 0.03), 0, 1))
            r = float(np.clip(r * (1 - r_rate) + rng.normal(0, 0.02), 0, 1))
            pts.append(((i + 1) * every, (f, r), True))
        trials.append(pts)
    return trials


@pytest.mark.parametrize("seed", range(4))
def test_synchronous_decisions_do_not_depend_on_arrival_order_where_asynchronous_ones_do(seed):
    """The same 16 trajectories replayed (``benchmarks/search_efficiency.py``'s replay, the rung
    logic the Tune scheduler asks) with 12 random timings each: every evaluation takes a random
    time, so trials reach their rungs in other orders. Synchronous: the same trials trained to the
    same steps, so the same steps spent and hypervolume, every time. The asynchronous promotion
    variant, same settings: it differs across the timings on these trajectories (so the check
    can tell)."""
    bench = _bench()
    rng = np.random.default_rng(seed)
    trials = _random_trials(rng, 16, 8, 4)
    ref = [1.0, 0.0]
    settings = {"grace_period": 4, "reduction_factor": 2, "rank_by": "last", "extrapolate": 1.0, "keep_front": True,
                "rung_levels": [4, 12]}
    outcomes = {"synchronous": set(), "pause": set()}
    timing = random.Random(seed)
    for _ in range(12):
        seconds = [[timing.uniform(0.2, 3.0) for _ in t] for t in trials]
        for promotion in outcomes:
            _, _, spent, hv = bench.replay(trials, FORGET_RETAIN, ref, {**settings, "promotion": promotion}, 32,
                                           workers=2, seconds=seconds)
            outcomes[promotion].add((spent, round(hv, 12)))
    assert len(outcomes["synchronous"]) == 1, outcomes
    assert len(outcomes["pause"]) > 1, outcomes


@pytest.mark.parametrize("ranking, seed", [({}, 7), ({"rank_by": "trajectory"}, 18), ({"extrapolate": 1.0}, 19)])
def test_rungs_rebuilt_for_resume_decide_again_and_the_waiting_trials_wait_again(ranking, seed):
    """``raysweep resume`` rebuilds the rungs from MLflow without deciding (``restore_rungs``);
    ``restored()`` then reaches the live sweep's state: the same decided rungs and the same trials
    waiting, at every point of a sweep. Ranked by the trajectory or with an extrapolated point, a
    rung is judged on the points seen when it completed, not on the promoted trials' later ones
    (on these seeds judging them later promoted other trials)."""
    rng = np.random.default_rng(seed)
    trials = _random_trials(rng, 6, 4, 4)
    events = sorted(((i * 1.0 + rng.uniform(0, 0.9), f"t{n}", step, values)
                     for n, t in enumerate(trials) for i, (step, values, _) in enumerate(t)), key=lambda e: e[0])
    live = sync(num_trials=6, grace_period=4, reduction_factor=2, **ranking)
    seen = []
    for _, trial, step, values in events:
        if trial in live.stopped or (trial in live.paused and live.next_promotion() != trial):
            continue  # the live sweep does not run a trial that waits or was stopped
        if trial in live.paused:
            live.resume(trial)
        live.on_result(trial, step, values)
        seen.append((trial, step, values))
        rebuilt = sync(num_trials=6, grace_period=4, reduction_factor=2, **ranking)
        for t, s, v in seen:
            rebuilt.on_result(t, s, v, decide=False)
        rebuilt.stopped.update(live.stopped)  # restore_rungs reads these from the runs' tags
        rebuilt.restored()
        assert rebuilt.decided == live.decided, len(seen)
        # a trial the live sweep runs on from its arrival at a rung (promoted) waits to be promoted
        # again, first: after a crash nothing runs
        running = {t: live.reached[t] for t in live.history if t not in live.paused and t not in live.stopped
                   and t in live.reached and live.steps[t][-1] < 16
                   and live.steps[t][-1] == next(s for s in live.steps[t] if s >= live.reached[t])}
        assert all(t in live.decided[r] for t, r in running.items())
        assert rebuilt.paused == {**live.paused, **running}, (len(seen), rebuilt.paused, live.paused)
    assert sorted(live.decided) == [4, 8] and len(live.paused) >= 2  # both rungs decided; rung 4's losers wait


def test_the_tune_scheduler_lets_a_rung_go_on_without_a_failed_trial_but_waits_for_a_retried_one():
    """Tune calls ``on_trial_error`` also before it retries a trial (``train.max_failures``): a
    synchronous rung goes on without a trial that will not be retried, and keeps waiting for one
    that will (a real Tune ``Trial``)."""
    from ray.tune.experiment import Trial

    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    for failures, ended in ((0, False), (3, True)):
        r = sync(num_trials=3, grace_period=4, reduction_factor=2)
        scheduler = tune_scheduler(r, max_concurrent=2, num_trials=3)
        trial = Trial("unlearn", stub=True, max_failures=2)
        trial.run_metadata.num_failures = failures
        r.on_result("a", 4, [0.5, 0.8]); r.on_result("b", 4, [0.4, 0.9])
        scheduler.on_trial_error(None, trial)
        assert (trial.trial_id in r.gone) == ended
        assert (r.next_promotion() == "b") == ended, failures


def test_ties_at_a_synchronous_rung_go_to_the_trial_the_searcher_created_first():
    """Tune's trial ids are hashes: a rung that broke ties by name kept other trials live than its
    replay did (quickstart seed 2 under a budget: 13 of 24 trials had not moved at step 4 and tied
    exactly). Ties go to the earlier in the searcher's order (``add``: Tune's ``on_trial_add``, the
    replay's start order, the runs' start times on resume), not to the smaller id; the Tune
    scheduler passes its trials on as they are added (a real Tune ``Trial``)."""
    from ray.tune.experiment import Trial

    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    for created, kept in (([], "a1"), (["f3", "c2", "a1"], "f3"), (["c2", "f3", "a1"], "c2")):
        r = sync(num_trials=3, grace_period=4, reduction_factor=2)  # keeps floor(3/2) = 1
        for t in created:
            r.add(t)
        for t in ("a1", "c2", "f3"):
            r.on_result(t, 4, [0.9, 0.93])  # not moved yet: the same point
        assert r.decided[4] == [kept], (created, r.decided)
    r = sync(num_trials=2, grace_period=4)
    trials = [Trial("unlearn", stub=True) for _ in range(2)]
    scheduler = tune_scheduler(r, max_concurrent=2, num_trials=2)
    for trial in reversed(trials):
        scheduler.on_trial_add(None, trial)
    assert list(r.created) == [t.trial_id for t in reversed(trials)]
