"""Pareto front and hypervolume against brute-force references (ties, duplicates, min/max mixes)."""

import itertools

import numpy as np
import pytest

from raysweep.sweep.pareto import hypervolume, non_dominated, nondominated_ranks


def brute_front(points, directions):
    """Definition, literally: i is on the front unless some j is no worse everywhere and better once."""
    def better_or_equal(a, b, d):
        return a >= b if d == "max" else a <= b

    def strictly_better(a, b, d):
        return a > b if d == "max" else a < b

    out = []
    for i, p in enumerate(points):
        dominated = any(
            all(better_or_equal(q[k], p[k], d) for k, d in enumerate(directions))
            and any(strictly_better(q[k], p[k], d) for k, d in enumerate(directions))
            for j, q in enumerate(points) if j != i)
        out.append(not dominated)
    return np.array(out)


def brute_hypervolume(points, directions, ref):
    """Exact area/volume of the union of boxes by coordinate compression: sum every grid cell
    that some point's box covers."""
    sign = np.array([1 if d == "max" else -1 for d in directions])
    p = np.asarray(points, float) * sign
    r = np.asarray(ref, float) * sign
    p = p[np.all(p > r, axis=1)]
    if len(p) == 0:
        return 0.0
    axes = [np.unique(np.concatenate([[r[k]], p[:, k]])) for k in range(p.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        upper = np.array([axes[k][c + 1] for k, c in enumerate(cell)])
        if np.any(np.all(p >= upper, axis=1)):
            total += np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)])
    return total


DIRECTIONS = [["max", "max"], ["min", "max"], ["min", "min"], ["max", "min", "max"], ["min", "min", "max"]]


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_front_and_hypervolume_match_brute_force(seed, directions):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 14))
    pts = rng.integers(0, 6, size=(n, len(directions))).astype(float) / 5  # many ties
    if n > 2:
        pts[1] = pts[0]  # an exact duplicate
    np.testing.assert_array_equal(non_dominated(pts, directions), brute_front(pts, directions))
    ref = [(-0.1 if d == "max" else 1.1) for d in directions]
    assert hypervolume(pts, directions, ref) == pytest.approx(brute_hypervolume(pts, directions, ref), abs=1e-12)
    # A reference point inside the cloud: points not better than it everywhere do not count.
    mid = [0.5] * len(directions)
    assert hypervolume(pts, directions, mid) == pytest.approx(brute_hypervolume(pts, directions, mid), abs=1e-12)


def test_hypervolume_of_known_staircase():
    pts = [[0.2, 0.9], [0.5, 0.5], [0.9, 0.1], [0.4, 0.4]]  # the last is dominated
    assert hypervolume(pts, ["max", "max"], [0, 0]) == pytest.approx(0.2 * 0.9 + 0.3 * 0.5 + 0.4 * 0.1)
    assert list(non_dominated(pts, ["max", "max"])) == [True, True, True, False]


def test_bad_direction():
    with pytest.raises(ValueError, match="not allowed"):
        non_dominated([[1, 2]], ["max", "maximise"])


def test_a_nan_row_is_never_on_the_front_and_never_dominates():
    pts = np.array([[0.2, 0.9], [np.nan, 0.5], [0.9, np.nan], [0.5, 0.5], [0.4, 0.4]])
    assert list(non_dominated(pts, ["max", "max"])) == [True, False, False, True, False]
    # NaN rows rank after every finite row (and the ranking ends)
    assert list(nondominated_ranks(pts, ["max", "max"])) == [0, 2, 2, 0, 1]
    assert hypervolume(pts, ["max", "max"], [0, 0]) == pytest.approx(0.2 * 0.9 + 0.3 * 0.5)


def test_the_nadir_ignores_nan_rows():
    from raysweep.sweep.pareto import nadir

    pts = [[0.2, 0.9], [np.nan, 0.1], [0.9, 0.3]]
    assert nadir(pts, ["max", "min"]) == [0.2, 0.9]
    assert hypervolume(pts, ["max", "min"], nadir(pts, ["max", "min"])) == pytest.approx(0.7 * 0.6)
    assert nadir([[np.nan, 1.0]], ["max", "max"]) == pytest.approx([np.nan, np.nan], nan_ok=True)


def test_the_report_keeps_nan_points_off_the_front_and_out_of_the_nadir(tmp_path, tofu_dir):
    """A NaN evaluation logged to MLflow (real sqlite store): not on the front, and the nadir
    reference point (no point stated in the job) stays finite, so the hypervolume is not 0."""
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    from .made_sweep import make_sweep

    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    c.set_tag(parent.info.run_id, "raysweep.reference_point", "")
    t3 = next(r for r in tracking.child_runs(c, parent) if r.data.tags[tracking.TRIAL_TAG] == "t3")
    c.log_metric(t3.info.run_id, "eval/forget_rougeL_recall", float("nan"), step=2)
    c.log_metric(t3.info.run_id, "eval/retain_rougeL_recall", 0.99, step=2)
    report = pareto_report(c, uri, "made")
    assert ("t3", 2) not in {(r["trial_id"], r["step"]) for r in report["front"]}
    assert all(np.isfinite(v) for v in report["reference_point"].values())
    assert report["hypervolume"] > 0


def brute_ranks(points, directions):
    """Peel the brute-force front off, layer by layer."""
    ranks, left, rank = np.full(len(points), -1), np.arange(len(points)), 0
    while len(left):
        front = brute_front(points[left], directions)
        ranks[left[front]] = rank
        left, rank = left[~front], rank + 1
    return ranks


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_ranks_match_peeling_brute_force_fronts(seed, directions):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 30))
    pts = rng.integers(0, 5, size=(n, len(directions))).astype(float) / 4  # ties and duplicates
    np.testing.assert_array_equal(nondominated_ranks(pts, directions), brute_ranks(pts, directions))


def test_front_and_ranks_of_a_5000_trial_sweep_take_seconds():
    """Issue 28: 5,000 trials x 4 evaluated steps = 20,000 points. The all-pairs version took
    minutes for the ranks (one O(n^2) pass per layer); checked against the brute force on a
    sample, and timed."""
    import time

    rng = np.random.default_rng(0)
    f = np.cumsum(rng.uniform(0, 1, (5000, 4)), axis=1).ravel()
    pts = np.column_stack([f, f * rng.uniform(0.2, 1.0, len(f)) + rng.uniform(0, 0.5, len(f))])
    t = time.perf_counter()
    mask = non_dominated(pts, ["max", "min"])
    ranks = nondominated_ranks(pts, ["max", "min"])
    took = time.perf_counter() - t
    print(f"front and ranks of {len(pts)} points: {took:.2f} s")
    assert took < 10
    assert np.array_equal(mask, ranks == 0)
    sample = rng.choice(len(pts), 300, replace=False)
    np.testing.assert_array_equal(nondominated_ranks(pts[sample], ["max", "min"]),
                                  brute_ranks(pts[sample], ["max", "min"]))


@pytest.mark.parametrize("directions", [["max", "min"], ["min", "min"]])
def test_hypervolume_by_trials_matches_the_brute_force_of_each_prefix(directions):
    """Issue 28: the curve keeps its front from trial to trial and recomputes the hypervolume only
    when a trial's point joins it; after each trial (by end time) it equals the area of the union
    of the feasible points' boxes of the trials so far, ties and infeasible points included."""
    from raysweep.sweep.report import hypervolume_history

    rng = np.random.default_rng(7)
    objectives = {"a": directions[0], "b": directions[1]}
    rows = []
    for t in rng.permutation(25):
        for step in (1, 2):
            a, b = (float(v) for v in rng.integers(0, 12, 2))  # integer grid: ties and duplicates
            rows.append({"run_id": f"r{t}", "trial_id": f"t{t}", "end_time": int(t) * 1000, "step": step,
                         "objectives": {"a": a, "b": b}, "feasible": bool(rng.random() > 0.2)})
    ref = [-1.0 if d == "max" else 13.0 for d in directions]
    history = hypervolume_history(rows, objectives, ref)
    for h in history:
        seen = {f"r{t}" for t in range(h["trials"])}
        pts = [[r["objectives"]["a"], r["objectives"]["b"]] for r in rows if r["run_id"] in seen and r["feasible"]]
        assert h["hypervolume"] == pytest.approx(brute_hypervolume(pts, directions, ref) if pts else 0.0)
    assert [h["trials"] for h in history] == list(range(1, 26))
