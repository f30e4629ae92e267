"""MO-ASHA's ``budget`` (issue 26): successive halving decides its rungs as before; the steps its
budget leaves once the last rung is decided resume waiting trials, the ones judged earliest first
(the lowest rung), each rung's best ranked first, so a late bloomer cut at the first rung gets
the steps a fixed reduction factor would leave unspent."""

import random

import numpy as np
import pytest

from raysweep.sweep.schedulers.mo_asha import CONTINUE, PAUSE, STOP, MOASHARungs

from .test_mo_asha_sync import FORGET_RETAIN, _bench, _random_trials, sync


def _four_through_both_rungs(budget=None) -> MOASHARungs:
    """4 trials of 16 steps, rungs at 4 and 8, keep floor(n/2): rung 4 keeps [d, a] (b, c wait at
    step 4), rung 8 keeps [a] (d waits at step 8). Committed when rung 8 is decided: a to the end
    (16) + d 8 + b 4 + c 4 = 32 of the 64 steps of 4 full trials."""
    r = sync(num_trials=4, grace_period=4, reduction_factor=2, budget=budget)
    for t, v in (("a", [0.5, 0.8]), ("b", [0.6, 0.7]), ("c", [0.9, 0.2]), ("d", [0.3, 0.9])):
        r.on_result(t, 4, v)
    assert r.decided == {4: ["d", "a"]}
    r.resume("a")
    assert r.on_result("d", 8, [0.25, 0.85]) == PAUSE
    assert r.on_result("a", 8, [0.1, 0.95]) == CONTINUE     # a dominates d: rung 8 (the last) decided
    assert r.decided[8] == ["a"]
    return r


@pytest.mark.parametrize("budget, revived", [
    (None, []),
    (0.5, []),                       # 32 of 32 committed: nothing left
    (0.75, ["b"]),                   # 16 left: b (rung 4, ranked above c) costs 12; c (12) and d (8) do not fit in 4
    (0.625, ["d"]),                  # 8 left: b and c (12 each) do not fit; d, waiting at rung 8, does
    (1.0, ["b", "c", "d"]),          # 32 left: all three (12 + 12 + 8), the lowest rung first
])
def test_the_budget_left_after_the_last_rung_resumes_the_waiting_trials_lowest_rung_first(budget, revived):
    r = _four_through_both_rungs(budget)
    assert list(r.revived) == revived
    got = []
    while (t := r.next_promotion()) is not None:
        r.resume(t)
        got.append(t)
    assert got == revived                                    # promoted in that order, after the rungs' own
    for t in revived:                                        # each trains to the end through the decided rungs
        steps = range(r.steps[t][-1] + 4, 17, 4)
        assert [r.on_result(t, s, [0.2, 0.9]) for s in steps] == [CONTINUE] * len(steps)
    assert sorted(r.stop_paused()) == sorted({"b", "c", "d"} - set(revived))
    spent = sum(r.steps[t][-1] for t in r.history)
    assert spent <= (budget or 0.5) * 4 * 16, spent
    assert r.ranking(8) == ["a", "d"]                        # a revived trial's later arrival is no new member
    assert r.on_result("b", 12, [0.0, 1.0]) == (CONTINUE if "b" in revived else STOP)


def test_a_budget_is_refused_without_successive_halving_or_outside_0_to_1():
    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="budget"):
            sync(num_trials=4, grace_period=4, budget=bad)
    for promotion in ("stop", "pause"):
        with pytest.raises(ValueError, match="budget: 0.5 is not allowed with promotion"):
            MOASHARungs(dict(FORGET_RETAIN), max_steps=16, promotion=promotion, budget=0.5)


@pytest.mark.parametrize("seed", range(3))
def test_budgeted_decisions_do_not_depend_on_arrival_order_and_stay_within_the_budget(seed):
    """The same 16 trajectories replayed under 8 random timings (``benchmarks/search_efficiency.py``'s
    replay): one outcome, and the steps spent never exceed the budget's share of 16 full trials;
    the budget trains more than the same rungs without it (so the revival happened)."""
    bench = _bench()
    trials = _random_trials(np.random.default_rng(seed), 16, 8, 4)
    settings = {"grace_period": 4, "reduction_factor": 3, "rank_by": "last", "promotion": "synchronous",
                "rung_levels": [4, 12]}
    timing = random.Random(seed)
    outcomes, plain = set(), set()
    for _ in range(8):
        seconds = [[timing.uniform(0.2, 3.0) for _ in t] for t in trials]
        for arm, seen in (({**settings, "budget": 0.5}, outcomes), (settings, plain)):
            _, _, spent, hv = bench.replay(trials, FORGET_RETAIN, [1.0, 0.0], arm, 32, workers=2, seconds=seconds)
            seen.add((spent, round(hv, 12)))
    assert len(outcomes) == 1, outcomes
    (spent, hv), = outcomes
    (plain_spent, plain_hv), = plain
    assert plain_spent < spent <= 0.5 * 16 * 32 and hv >= plain_hv, (spent, plain_spent)


def test_rungs_rebuilt_for_resume_revive_the_same_trials():
    """``raysweep resume`` rebuilds the rungs without deciding; ``restored()`` decides again and
    the budget resumes the same trials, at every point of a sweep, however far the revived ones
    have trained (their later evaluations are no members of the rungs they pass)."""
    rng = np.random.default_rng(3)
    trials = _random_trials(rng, 6, 4, 4)
    events = sorted(((i * 1.0 + rng.uniform(0, 0.9), f"t{n}", step, values)
                     for n, t in enumerate(trials) for i, (step, values, _) in enumerate(t)), key=lambda e: e[0])
    live = sync(num_trials=6, grace_period=4, reduction_factor=2, budget=0.8)
    seen, pending = [], list(events)
    while pending:  # a trial waits until promoted; revived ones run after the rungs are decided
        for k, (_, trial, step, values) in enumerate(pending):
            if trial in live.stopped:
                continue
            if trial in live.paused and live.next_promotion() != trial:
                continue
            break
        else:
            break
        _, trial, step, values = pending.pop(k)
        if trial in live.paused:
            live.resume(trial)
        live.on_result(trial, step, values)
        seen.append((trial, step, values))
        rebuilt = sync(num_trials=6, grace_period=4, reduction_factor=2, budget=0.8)
        for t, s, v in seen:
            rebuilt.on_result(t, s, v, decide=False)
        rebuilt.stopped.update(live.stopped)
        rebuilt.restored()
        assert rebuilt.decided == live.decided and rebuilt.revived == live.revived, len(seen)
    assert live.revived and all(live.steps[t][-1] == 16 for t in live.revived), live.revived


def test_the_tune_scheduler_says_how_many_trials_the_budget_resumed():
    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    scheduler = tune_scheduler(_four_through_both_rungs(0.75), max_concurrent=2, num_trials=4)
    assert scheduler.debug_string().endswith("0 trials stopped, 3 paused, 1 resumed by the budget"), scheduler.debug_string()
    assert "budget" not in tune_scheduler(_four_through_both_rungs(), max_concurrent=2, num_trials=4).debug_string()


@pytest.mark.parametrize("budget, revived", [
    (0.6, []),                       # 0.6 x 66 = 39.6 - 34 committed: 5.6 left, nothing fits (b 12, c 12, d 8)
    (0.75, ["b"]),                   # 49.5 - 34 = 15.5: b; counted at 16, e would leave 26: b and c
    (1.0, ["b", "c", "d"]),          # 66 - 34 = 32: all three
])
def test_a_trial_that_ended_by_itself_counts_in_the_budget_where_it_ended(budget, revived):
    """The budget is a share of what FIFO would train: e, ended by itself at step 2 (the retain-loss
    guard), counts 2 steps, not 16, so 5 trials of 16 steps make 66, not 80. Committed when rung 8
    is decided: a 16 + d 8 + b 4 + c 4 + e 2 = 34."""
    r = sync(num_trials=5, grace_period=4, reduction_factor=2, budget=budget)
    assert r.on_result("e", 2, [0.95, 0.1]) == CONTINUE      # below the first rung
    r.ended("e")
    for t, v in (("a", [0.5, 0.8]), ("b", [0.6, 0.7]), ("c", [0.9, 0.2]), ("d", [0.3, 0.9])):
        r.on_result(t, 4, v)
    assert r.decided == {4: ["d", "a"]}
    r.resume("a")
    r.on_result("d", 8, [0.25, 0.85])
    r.on_result("a", 8, [0.1, 0.95])
    assert r.decided[8] == ["a"]
    assert list(r.revived) == revived
    spent = 16 + 8 + 4 + 4 + 2 + sum(16 - r.steps[t][-1] for t in revived)
    assert spent <= budget * 66 < spent + min([12, 12, 8][len(revived):] or [99])


@pytest.mark.parametrize("status, reason, ended", [
    ("FAILED", "early stop: retain loss 9.1 > 8.0", True),   # the retain-loss guard
    ("FINISHED", "", True),
    ("FAILED", "RuntimeError: CUDA error", False),          # an error: Tune may retry it
])
def test_rungs_rebuilt_for_resume_learn_of_a_trial_that_ended_by_itself_when_it_did(status, reason, ended):
    """``restore_rungs`` replays each run that ended by itself (FINISHED, or FAILED by the sweep's
    early stop, and not stopped by the scheduler) at its end time among the evaluations (a real
    sqlite MLflow): the rung that waited on it is decided where the live one was, and the budget
    counts it where it ended. Without the ended event the rebuilt first rung waits for it (as it
    does for a run FAILED by an error, which may be retried) and nothing is decided."""
    from types import SimpleNamespace

    from raysweep.sweep.schedulers.restore import restore_rungs

    from .test_mo_asha_ties import mlflow_sweep

    # e ends at step 2; the others were running when the sweep died
    c, parent = mlflow_sweep(
        {"e": [(2, [0.95, 0.1])], "a": [(4, [0.5, 0.8]), (8, [0.1, 0.95])], "b": [(4, [0.6, 0.7])],
         "c": [(4, [0.9, 0.2])], "d": [(4, [0.3, 0.9]), (8, [0.25, 0.85])]},
        ended={"e": (status, reason)})
    rebuilt = sync(num_trials=5, grace_period=4, reduction_factor=2, budget=0.75)
    assert restore_rungs(rebuilt, c, parent, SimpleNamespace(sweep=SimpleNamespace(constraint=None))) == 7
    if ended:
        assert rebuilt.gone == {"e"} and rebuilt.decided == {4: ["d", "a"], 8: ["a"]}
        assert list(rebuilt.revived) == ["b"]
    else:
        assert rebuilt.gone == set() and rebuilt.decided == {} and not rebuilt.revived


def test_a_trial_the_scheduler_stopped_is_not_counted_as_ended_by_itself_when_tune_completes_it():
    """Tune calls the scheduler's ``on_trial_complete`` for a trial it told to STOP (real Tune
    ``Trial`` objects through the adapter). Counted as ended by itself, c would shrink the budget to
    0.75 x (64 - 12) - 32 = 7 and nothing would be resumed; found live (wide seed 14: the live sweep
    trained 352 steps where its replay trained 368, same hypervolume)."""
    from ray.tune.experiment import Trial

    from raysweep.sweep.schedulers.tune_adapter import tune_scheduler

    r = sync(num_trials=4, grace_period=4, reduction_factor=2, budget=0.75)
    scheduler = tune_scheduler(r, max_concurrent=2, num_trials=4)
    trials = {t: Trial("unlearn", stub=True, config={}) for t in "abdc"}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    decisions = {}
    for name, v in (("a", [0.5, 0.8]), ("b", [0.6, 0.7]), ("d", [0.3, 0.9]), ("c", [0.9, 0.2])):
        result = {"step": 4, "eval/forget": v[0], "eval/retain": v[1]}
        decisions[name] = scheduler.on_trial_result(None, trials[name], result)
        if decisions[name] == "STOP":
            scheduler.on_trial_complete(None, trials[name], result)   # as Tune's controller does
    assert decisions["c"] == "STOP" and r.gone == set()              # the last arrival completes rung 4, cut
    ids = {t.trial_id: name for name, t in trials.items()}
    for _ in range(2):                                               # d, then a: both resume from step 4
        r.resume(r.next_promotion())
    scheduler.on_trial_result(None, trials["d"], {"step": 8, "eval/forget": 0.25, "eval/retain": 0.85})
    scheduler.on_trial_result(None, trials["a"], {"step": 8, "eval/forget": 0.1, "eval/retain": 0.95})
    assert [ids[t] for t in r.decided[8]] == ["a"]
    assert [ids[t] for t in r.revived] == ["b"]                      # 0.75 x 64 - (16 + 8 + 4 + 4) = 16: b (12)
