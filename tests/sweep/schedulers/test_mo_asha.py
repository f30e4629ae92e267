"""MO-ASHA's rung decisions on hand-made results: mixed directions, infeasible trials, ties."""

import math

import numpy as np
import pytest

from raysweep.sweep.pareto import crowding_distances, hypervolume, hypervolume_contributions, nondominated_ranks
from raysweep.sweep.schedulers.mo_asha import CONTINUE, PAUSE, STOP, MOASHARungs

MIXED = {"forget_quality": "max", "retain_loss": "min"}


def rungs(**kw):
    return MOASHARungs(dict(kw.pop("objectives", MIXED)), max_steps=kw.pop("max_steps", 64), **kw)


def test_milestones_are_grace_times_powers_of_the_reduction_factor_below_max_steps():
    assert rungs(grace_period=8, reduction_factor=2).milestones == [8, 16, 32]
    assert rungs(grace_period=4, reduction_factor=3, max_steps=100).milestones == [4, 12, 36]
    assert rungs(grace_period=64).milestones == []  # nothing to decide before the end
    with pytest.raises(ValueError, match="reduction_factor"):
        rungs(reduction_factor=1.0)


def test_directions_are_respected_one_by_one():
    r = rungs(grace_period=8, reduction_factor=2)
    # "a" is better on both objectives: higher forget quality AND lower retain loss.
    assert r.on_result("a", 8, [0.9, 0.1]) == CONTINUE
    assert r.on_result("b", 8, [0.2, 0.8]) == STOP          # dominated by a: bottom half of 2
    # Under the opposite directions the same numbers make "b" the better one.
    flipped = rungs(objectives={"forget_quality": "min", "retain_loss": "max"})
    flipped.on_result("a", 8, [0.9, 0.1])
    assert flipped.ranking(8) == ["a"]
    assert flipped.on_result("b", 8, [0.2, 0.8]) == CONTINUE
    assert flipped.ranking(8) == ["b", "a"]


def test_the_first_arrival_always_continues_and_the_top_fraction_is_kept():
    r = rungs(grace_period=8, reduction_factor=2)
    assert r.on_result("t0", 8, [0.1, 0.9]) == CONTINUE  # alone at the rung
    assert r.on_result("t1", 8, [0.5, 0.5]) == CONTINUE  # dominates t0: ceil(2/2)=1 kept, it is t1
    assert r.on_result("t2", 8, [0.3, 0.7]) == CONTINUE  # rank 1 (dominated only by t1), 2 of 3 kept
    assert r.on_result("t3", 8, [0.0, 1.0]) == STOP      # rank 2, 2 of 4 kept
    assert r.ranking(8)[:2] == ["t1", "t2"]


def test_an_infeasible_trial_is_dominated_by_every_feasible_one():
    r = rungs(grace_period=8, reduction_factor=2)
    r.on_result("weak", 8, [0.1, 0.9], feasible=True)
    # Much better objectives, but it breaks the retention constraint: it ranks after "weak".
    assert r.on_result("breaks", 8, [0.99, 0.01], feasible=False) == STOP
    assert r.ranking(8) == ["weak", "breaks"]
    # Among infeasible trials, non-domination still orders them.
    r2 = rungs(grace_period=8)
    r2.on_result("x", 8, [0.1, 0.9], feasible=False)
    assert r2.on_result("y", 8, [0.5, 0.5], feasible=False) == CONTINUE


def test_non_finite_results_rank_last():
    r = rungs(grace_period=8)
    r.on_result("nan", 8, [math.nan, 0.1])
    assert r.on_result("ok", 8, [0.0, 9.0]) == CONTINUE
    assert r.ranking(8) == ["ok", "nan"]


@pytest.mark.parametrize("tie_break", ["hypervolume", "crowding"])
def test_ties_on_the_front_are_broken_by_spread_then_arrival(tie_break):
    r = rungs(grace_period=8, reduction_factor=4, tie_break=tie_break)
    # Four mutually non-dominated points; "mid2" sits close to "mid1" (small exclusive volume,
    # small crowding distance), the extremes are kept by either rule.
    for name, pt in [("lo", [0.1, 0.1]), ("mid1", [0.5, 0.5]), ("mid2", [0.52, 0.52]), ("hi", [0.9, 0.9])]:
        r.on_result(name, 8, pt)
    order = r.ranking(8)
    assert set(order) == {"lo", "mid1", "mid2", "hi"}
    assert order.index("mid2") > order.index("mid1") or order.index("mid2") == 3
    # identical points: arrival order decides
    same = rungs(grace_period=8, tie_break=tie_break)
    same.on_result("first", 8, [0.5, 0.5])
    assert same.on_result("second", 8, [0.5, 0.5]) == STOP
    assert same.ranking(8) == ["first", "second"]


def test_a_stopped_trial_stays_stopped_and_later_rungs_are_recorded_once():
    r = rungs(grace_period=8, reduction_factor=2)
    r.on_result("a", 8, [0.9, 0.1])
    assert r.on_result("b", 8, [0.1, 0.9]) == STOP
    assert r.on_result("b", 16, [0.99, 0.0]) == STOP
    assert r.on_result("a", 16, [0.9, 0.1]) == CONTINUE
    assert r.on_result("a", 16, [0.9, 0.1]) == CONTINUE  # the same rung again: not re-recorded
    assert [e.trial for e in r.rungs[16]] == ["a"]
    # A late first evaluation past two rungs is recorded at both.
    assert r.on_result("c", 20, [0.95, 0.05]) == CONTINUE
    assert [e.trial for e in r.rungs[8]] == ["a", "b", "c"] and [e.trial for e in r.rungs[16]] == ["a", "c"]


def test_recording_without_deciding_rebuilds_rungs_for_resume():
    r = rungs(grace_period=8)
    r.on_result("a", 8, [0.1, 0.9], decide=False)
    r.on_result("b", 8, [0.0, 1.0], decide=False)
    assert not r.stopped and [e.trial for e in r.rungs[8]] == ["a", "b"]


def test_pareto_helpers_against_their_definitions():
    pts = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 1.0], [2.5, 3.5], [0.5, 0.5]])
    dirs = ["max", "max"]
    assert list(nondominated_ranks(pts, dirs)) == [0, 1, 0, 0, 2]
    # mixed directions: minimising the second objective changes the ranks
    assert nondominated_ranks(pts, ["max", "min"])[2] == 0 and nondominated_ranks(pts, ["max", "min"])[0] > 0
    front = pts[[0, 2, 3]]
    ref = [0.0, 0.0]
    contrib = hypervolume_contributions(front, dirs, ref)
    for i in range(3):
        assert contrib[i] == pytest.approx(hypervolume(front, dirs, ref) - hypervolume(np.delete(front, i, 0), dirs, ref))
    cd = crowding_distances(front, dirs)
    assert np.isinf(cd[0]) and np.isinf(cd[1]) and np.isfinite(cd[2])
    # scale: a front at 1e-8 and at 1e8 ranks the same
    for scale in (1e-8, 1e8):
        assert list(nondominated_ranks(pts * scale, dirs)) == [0, 1, 0, 0, 2]


def test_ranking_by_trajectory_keeps_a_trial_whose_best_point_came_earlier():
    """Issue 26: a trial evaluated at steps 4 and 8 whose step-4 point dominates everything, but
    whose step-8 point (at the rung) is dominated: ranked by its last point it stops, ranked by its
    trajectory it continues - its step-4 point is on the sweep's front either way."""
    for rank_by, expected in (("last", STOP), ("trajectory", CONTINUE)):
        r = rungs(grace_period=8, reduction_factor=2, rank_by=rank_by)
        assert r.on_result("steady", 4, [0.5, 0.5]) == CONTINUE   # below the rung: recorded only
        assert r.on_result("steady", 8, [0.6, 0.4]) == CONTINUE   # first at the rung
        assert r.on_result("early", 4, [0.95, 0.05]) == CONTINUE
        assert r.on_result("early", 8, [0.3, 0.7]) == expected, rank_by


def test_trajectory_ranking_worked_example():
    """Three trials at the rung, each with its feasible points so far: the best rank of a trial's
    points among all of them, then the hypervolume its points alone add, then arrival; a trial with
    no feasible point last."""
    r = rungs(grace_period=8, reduction_factor=2, rank_by="trajectory")
    r.on_result("a", 4, [0.9, 0.5]); r.on_result("a", 8, [0.2, 0.9])   # rank 0 via its step-4 point
    r.on_result("b", 4, [0.5, 0.1]); r.on_result("b", 8, [0.4, 0.2])   # rank 0 too (best retain)
    r.on_result("c", 4, [0.3, 0.6], feasible=False); r.on_result("c", 8, [0.99, 0.01], feasible=False)
    r.on_result("d", 8, [0.45, 0.55])                                  # dominated by a@4 and b@4
    pts = np.array([[0.9, 0.5], [0.2, 0.9], [0.5, 0.1], [0.4, 0.2], [0.45, 0.55]])
    ref = [0.2 - 0.1 * 0.7, 0.9 + 0.1 * 0.8]  # 10% beyond the worst of each (max, min)
    whole = hypervolume(pts, ["max", "min"], ref)
    alone = {t: whole - hypervolume(np.delete(pts, idx, axis=0), ["max", "min"], ref)
             for t, idx in (("a", [0, 1]), ("b", [2, 3]))}
    first = max(alone, key=alone.get)
    assert r.ranking(8) == [first, "b" if first == "a" else "a", "d", "c"]


def test_the_search_efficiency_replay_counts_steps_and_points_as_a_sweep_would():
    """benchmarks/search_efficiency.py's replay on hand-made trajectories: FIFO trains every step
    and sees every point; an arm that stops a trial at its first rung saves exactly the steps after
    it, keeps the point it was stopped at, and frees its worker for the next trial at once."""
    import importlib.util

    from ...conftest import REPO

    spec = importlib.util.spec_from_file_location("search_efficiency", REPO / "benchmarks" / "search_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    objectives, ref = {"forget_quality": "max", "retain_loss": "min"}, [0.0, 1.0]
    good = [(s, (0.2 * s / 4, 0.5), True) for s in (4, 8, 12, 16)]       # better at every evaluation
    bad = [(s, (0.1, 0.9 - 0.01 * s), True) for s in (4, 8, 12, 16)]     # dominated at the rung
    late = [(s, (0.05, 0.95), True) for s in (4, 8, 12, 16)]
    trials = [good, bad, late]
    xs, ys, spent, hv = bench.replay(trials, objectives, ref, None, max_steps=16, workers=2)
    assert spent == 48 and len(xs) == 12
    points = np.array([v for t in trials for _, v, _ in t])
    assert hv == pytest.approx(hypervolume(points, list(objectives.values()), ref))
    arm = {"grace_period": 8, "reduction_factor": 2, "rank_by": "last"}
    xs, ys, spent, hv = bench.replay(trials, objectives, ref, arm, max_steps=16, workers=2)
    # good and bad both reach step 8 at time 8 (good first): bad is stopped there (8 steps, its
    # step-8 point kept); late starts at time 8 on the freed worker and is stopped at its rung
    # (step 8, behind good); good runs to 16
    assert spent == 16 + 8 + 8
    kept = np.array([v for v in [p for _, p, _ in good] + [p for s, p, _ in bad if s <= 8] + [p for s, p, _ in late if s <= 8]])
    assert hv == pytest.approx(hypervolume(kept, list(objectives.values()), ref))


def test_keep_front_never_stops_a_trial_with_a_point_on_the_sweeps_front():
    """``keep_front``: ranked out at its rung, a trial still continues while one of its points is
    non-dominated among every point evaluated so far (any trial, any step)."""
    for keep_front, expected in ((False, STOP), (True, CONTINUE)):
        r = rungs(grace_period=8, reduction_factor=2, keep_front=keep_front)
        r.on_result("a", 8, [0.9, 0.3])
        r.on_result("b", 8, [0.8, 0.2])       # both on the front: rank 0 at the rung
        r.on_result("c", 4, [0.1, 0.01])      # best retain of all: on the sweep's front
        assert r.on_result("c", 8, [0.5, 0.5]) == expected, keep_front  # dominated at the rung
    r = rungs(grace_period=8, reduction_factor=2, keep_front=True)
    r.on_result("a", 8, [0.9, 0.3]); r.on_result("b", 8, [0.8, 0.2])
    assert r.on_result("d", 8, [0.5, 0.5]) == STOP  # no point on the front: ranked out as before


FORGET_RETAIN = {"forget": "min", "retain": "max"}


def test_extrapolate_judges_a_trial_also_by_the_point_its_last_two_evaluations_predict():
    """Issue 26, a worked example: ``b``'s point at the rung (step 8) is dominated by ``a`` and
    ``steady``, but it is moving fast towards less forget; the point predicted at 2x its steps
    (extrapolate=1), clipped to the range seen so far, is on the front: it continues."""
    decisions = {}
    for x in (0.0, 1.0):
        r = rungs(objectives=FORGET_RETAIN, grace_period=8, reduction_factor=2, extrapolate=x)
        r.on_result("c", 4, [0.1, 0.2])                      # below the rung: only widens the range seen
        r.on_result("a", 4, [0.5, 0.9]); assert r.on_result("a", 8, [0.4, 0.9]) == CONTINUE
        r.on_result("steady", 4, [0.45, 0.9]); r.on_result("steady", 8, [0.45, 0.9])
        r.on_result("b", 4, [0.9, 0.9])
        decisions[x] = r.on_result("b", 8, [0.5, 0.85])
        if x:
            # independently: b + (b - a_) * x * 8 / (8 - 4), clipped to [min, max] of every value seen
            seen = np.array([[0.1, 0.2], [0.5, 0.9], [0.4, 0.9], [0.45, 0.9], [0.45, 0.9], [0.9, 0.9], [0.5, 0.85]])
            expected = np.clip(np.array([0.5, 0.85]) + (np.array([0.5, 0.85]) - np.array([0.9, 0.9])) * x * 8 / 4,
                               seen.min(axis=0), seen.max(axis=0))
            assert r._predicted("b") == pytest.approx(tuple(expected)) == (0.1, 0.75)
            assert r.ranking(8)[-1] == "steady"  # a's prediction (0.2, 0.9) dominates it
    assert decisions == {0.0: STOP, 1.0: CONTINUE}
    with pytest.raises(ValueError, match="extrapolate"):
        rungs(extrapolate=-0.5)


def test_promotion_pause_pauses_below_the_cut_and_promotes_when_the_rung_fills():
    """ASHA's promotion variant, worked: the best floor(n/2) of a rung may go on; the first arrival
    waits (floor(1/2) = 0), is promoted once a worse trial arrives, a trial that later enters the
    top half is promoted then, and what is left paused at the end is stopped."""
    r = rungs(objectives=FORGET_RETAIN, grace_period=8, reduction_factor=2, promotion="pause")
    assert r.on_result("a", 8, [0.4, 0.9]) == PAUSE and r.next_promotion() is None
    assert r.on_result("a", 8, [0.4, 0.9]) == PAUSE          # a late report while it pauses
    assert r.on_result("b", 8, [0.5, 0.8]) == PAUSE          # dominated by a: 2nd of 2, 1 may go on
    assert r.next_promotion() == "a" and r.next_promotion() == "a"  # stays paused until resumed
    r.resume("a")
    assert r.paused == {"b": 8}
    assert r.on_result("c", 8, [0.2, 0.95]) == CONTINUE      # dominates everything: 1st of 3, 1 may go on
    assert r.on_result("d", 8, [0.6, 0.5]) == PAUSE          # last of 4
    assert r.next_promotion() is None                         # top 2 of 4 are c and a, both going on
    assert r.on_result("e", 8, [0.9, 0.1]) == PAUSE           # 5th of 5
    assert r.on_result("f", 8, [0.95, 0.05]) == PAUSE         # 6th of 6: top 3 now takes b in
    assert r.next_promotion() == "b"
    r.resume("b")
    assert r.next_promotion() is None
    assert sorted(r.stop_paused()) == ["d", "e", "f"] and not r.paused
    assert r.on_result("d", 16, [0.0, 1.0]) == STOP
    r.ended("b")                                              # not paused: nothing changes
    assert "b" not in r.stopped
    with pytest.raises(ValueError, match="promotion"):
        rungs(promotion="later")
