"""The grid sampler: the grid comes from the search space, a real Optuna study (asked and told the
way Ray Tune's OptunaSearch does) visits every point exactly once, and bad grids are one-line
errors naming the field, the value and the grid size."""

import itertools
import math

import optuna
import pytest
import yaml
from pydantic import ValidationError

from raysweep.spec import JobSpecError, SweepSpec, _one_line
from raysweep.sweep.grid import GridError, grid_size, grid_values, resolve_grid_sweep
from raysweep.sweep.searcher import make_searcher
from raysweep.sweep.space import SearchSpace

RAW = {"method": {"sago": {"gamma": {"loguniform": [0.1, 2.0]}, "alpha": 0.5}},
       "forget": {"npo": {"beta": {"choice": [0.05, 0.5]}}},
       "unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}, "steps": {"int": [4, 10]}, "batch_size": 4}}


def space(raw=RAW):
    s = SearchSpace(raw, "s.yaml")
    s.validate()
    return s


def test_grid_values_from_the_space():
    v = grid_values(space(), {"method.sago.gamma": 2, "unlearn.lr": 3, "unlearn.steps": 3})
    # choices as given, log ranges log-spaced with exact bounds, int ranges evenly spaced; fixed
    # values (alpha, batch_size) are not grid axes
    assert v == {"method.sago.gamma": [0.1, 2.0], "forget.npo.beta": [0.05, 0.5],
                 "unlearn.lr": [1e-4, 1e-3, 1e-2], "unlearn.steps": [4, 7, 10]}
    assert grid_size(v) == 2 * 2 * 3 * 3
    one = grid_values(space(), {"method.sago.gamma": 1, "unlearn.lr": 1, "unlearn.steps": 1})
    assert one["unlearn.lr"] == pytest.approx([1e-3]) and one["unlearn.steps"] == [7]  # the middle
    assert grid_size(grid_values(space(), 4)) == 4 * 2 * 4 * 4  # one int for every range


def test_every_grid_point_exactly_once_through_the_searcher(tmp_path):
    """The searcher raysweep's driver builds, asked and told as Ray Tune does; its last tell must not
    raise (Optuna's GridSampler calls study.stop(), which raises outside study.optimize)."""
    s = space()
    points = {"method.sago.gamma": 2, "unlearn.lr": 3, "unlearn.steps": 2}
    values = grid_values(s, points)
    searcher = make_searcher(s, {"forget_quality": "max", "model_utility": "max"}, "grid", 0, False,
                             grid_points=points)
    drawn = []
    for i in range(grid_size(values)):
        config = searcher.suggest(f"t{i}")
        drawn.append(tuple(config[k] for k in sorted(values)))
        searcher.on_trial_complete(f"t{i}", {"forget_quality": 0.1 * i, "model_utility": 1.0 - 0.01 * i})
    assert sorted(drawn) == sorted(itertools.product(*(values[k] for k in sorted(values))))
    study = searcher._ot_study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * len(drawn)
    # Ray Tune checkpoints the searcher with plain pickle (a local class would not pickle)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(s, {"forget_quality": "max", "model_utility": "max"}, "grid", 0, False,
                             grid_points=points)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert len(restored._ot_study.trials) == len(drawn)


def test_the_seed_orders_the_grid():
    s = space()
    def order(seed):
        searcher = make_searcher(s, {"a": "max"}, "grid", seed, False, grid_points=2)
        return [tuple(sorted(searcher.suggest(f"t{i}").items())) for i in range(4)]
    assert order(0) == order(0) and order(0) != order(1)


def sweep(tmp_path, raw=RAW, **fields):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return {"search_space": str(path), "objectives": {"forget_quality": "max"}, "sampler": "grid", **fields}


def resolved(data):
    """The sweep spec as the sweep sees it: validated, then its grid read (the spec alone cannot
    size a grid; it does not read search spaces)."""
    return resolve_grid_sweep(SweepSpec.model_validate(data))


def error(data):
    """The one line of a bad grid, from the spec's validation or from the sweep's grid check."""
    try:
        resolved(data)
    except ValidationError as err:
        line = _one_line(err, SweepSpec)
    except JobSpecError as err:
        line = str(err)
    else:
        raise AssertionError(f"accepted: {data}")
    assert "\n" not in line
    return line


def test_num_trials_omitted_is_the_grid_size(tmp_path):
    assert SweepSpec.model_validate(sweep(tmp_path, grid_points=2)).num_trials is None  # until the sweep reads the grid
    assert resolved(sweep(tmp_path, grid_points=2)).num_trials == 2 * 2 * 2 * 2
    assert resolved(sweep(tmp_path, grid_points=2, num_trials=16)).num_trials == 16
    assert resolved(sweep(tmp_path)).num_trials == 3 * 2 * 3 * 3  # 3 points per range
    # null clears a job file's num_trials (--set sweep.num_trials=null)
    assert resolved(sweep(tmp_path, grid_points=2, num_trials=None)).num_trials == 16
    # another sampler: the default, 8
    assert SweepSpec.model_validate({**sweep(tmp_path), "sampler": "tpe"}).num_trials == 8


def test_grid_errors_are_one_line(tmp_path):
    assert error(sweep(tmp_path, grid_points=2, num_trials=10)) == (
        "sweep.num_trials: 10 is not allowed with sampler grid (the grid of space.yaml has 16 points: "
        "omit num_trials, set it to null or give 16)")
    line = error(sweep(tmp_path, grid_points={"unlearn.lr": 3, "unlearn.lrr": 2}))
    assert line.startswith("sweep.grid_points: 'unlearn.lrr' is not allowed (a numeric range of ")
    assert line.endswith("space.yaml: method.sago.gamma, unlearn.lr, unlearn.steps)")
    assert error(sweep(tmp_path, grid_points={"unlearn.lr": 3})) == (
        "sweep.grid_points: {'unlearn.lr': 3} is not allowed (it names no point count for method.sago.gamma, "
        "unlearn.steps; a mapping names every numeric range)")
    assert error(sweep(tmp_path, grid_points=9)) == (
        "sweep.grid_points: unlearn.steps: 9 is not allowed (int range [4, 10] has only 7 distinct values on its grid)")
    assert error(sweep(tmp_path, grid_points=0)) == "sweep.grid_points: 0 is not allowed (a whole number of points >= 1)"
    assert error({**sweep(tmp_path, grid_points=2), "sampler": "tpe"}) == (
        "sweep.grid_points: 2 is not allowed with sampler 'tpe' (sampler grid only)")
    two = {"method": {"sago": {}, "graddiff": {}}, "unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    line = error(sweep(tmp_path, two))
    assert line.startswith("sweep.search_space: ") and line.endswith(
        "space.yaml: method: 2 names (graddiff, sago) are not allowed with sampler grid (one name per section: "
        "a choice between methods has conditional parameters; one sweep per name instead)")


def test_log_grid_stays_inside_its_range():
    s = space({"unlearn": {"lr": {"loguniform": [3e-5, 3e-3]}}})
    v = grid_values(s, 7)["unlearn.lr"]
    assert v[0] == 3e-5 and v[-1] == 3e-3 and all(3e-5 <= x <= 3e-3 for x in v)
    ratios = [b / a for a, b in zip(v, v[1:])]
    assert all(math.isclose(r, 100 ** (1 / 6), rel_tol=1e-3) for r in ratios)
    with pytest.raises(GridError):
        grid_values(s, {"unlearn.lr": True})


@pytest.mark.slow
def test_a_real_grid_sweep_runs_every_point_once(tmp_path, tofu_dir, shared_cache):
    """`raysweep launch` with sampler grid and no num_trials: 2 x 2 points, each one trial in MLflow."""
    import os
    import subprocess
    import sys

    from raysweep.sweep import tracking

    from ..conftest import tiny_job

    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=2, batch_size=4)
    job = yaml.safe_load(path.read_text())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(
        {"method": {"graddiff": {"alpha": {"choice": [0.5, 2.0]}}}, "unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 4, "max_new_tokens": 4}
    job["sweep"] = {"search_space": str(tmp_path / "space.yaml"), "objectives": {"forget_answer_loss": "max"},
                    "sampler": "grid", "grid_points": 2, "max_concurrent": 1,
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage_path": str(tmp_path / "runs")}
    path.write_text(yaml.safe_dump(job))
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "launch", str(path), "--name", "grid"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "RAY_ADDRESS": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    c = tracking.client(job["sweep"]["tracking_uri"])
    parent = c.search_runs([e.experiment_id for e in c.search_experiments()],
                           filter_string=f"tags.`{tracking.ROLE_TAG}` = 'parent'")[0]
    drawn = sorted((float(r.data.params["alpha"]), float(r.data.params["lr"])) for r in tracking.child_runs(c, parent))
    assert drawn == [(0.5, 1e-4), (0.5, 1e-2), (2.0, 1e-4), (2.0, 1e-2)]


@pytest.mark.parametrize("kind,lo,hi", [("loguniform", 1e-6, 1.0001e-6), ("uniform", 0.5, 0.50001),
                                         ("loguniform", 1e-12, 1e12), ("uniform", -3e8, 3e8)])
@pytest.mark.parametrize("n", [3, 7, 12])
def test_grid_points_are_distinct_and_inside_narrow_and_wide_ranges(kind, lo, hi, n):
    v = grid_values(space({"unlearn": {"lr": {kind: [lo, hi]}}}), n)["unlearn.lr"]
    assert len(v) == n and v[0] == lo and v[-1] == hi
    assert all(a < b for a, b in zip(v, v[1:])), v  # distinct, in order, so inside the range


def test_a_range_without_room_for_the_points_is_one_line():
    s = space({"unlearn": {"lr": {"uniform": [1.0, 1.0 + 2 ** -52]}}})  # two neighbouring floats
    with pytest.raises(GridError, match=r"^unlearn.lr: 3 is not allowed \(uniform range \[1.0, 1.0000000000000002\] "
                                        r"has only 2 distinct values on its grid\)$"):
        grid_values(s, 3)
