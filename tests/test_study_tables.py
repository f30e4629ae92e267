"""jobs/study/make_tables.py: the front, its hypervolume, and utility kept at matched forgetting."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("make_tables", Path(__file__).parents[1] / "jobs/study/make_tables.py")
mt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mt)


def test_kept_at_takes_the_highest_utility_front_point_reaching_the_level():
    # (forget quality, utility): (0.2, 0.5) is dominated by (0.3, 0.6).
    pts = np.array([[0.01, 0.9], [0.2, 0.5], [0.3, 0.6], [0.8, 0.2]])
    assert mt.front(pts).tolist() == [[0.01, 0.9], [0.3, 0.6], [0.8, 0.2]]
    assert mt.kept_at(pts, target_mu=0.8, level=0.1) == 0.6 / 0.8
    assert mt.kept_at(pts, target_mu=0.8, level=0.5) == 0.2 / 0.8
    assert mt.kept_at(pts, target_mu=0.8, level=0.9) is None


def test_hypervolume_of_the_front_against_the_origin():
    pts = np.array([[0.5, 0.5], [1.0, 0.25], [0.25, 0.25]])
    assert abs(mt.hv(pts) - (0.5 * 0.5 + 0.5 * 0.25)) < 1e-12
    assert mt.hv(np.zeros((0, 2))) == 0.0


def test_best_method_is_the_best_mean_hypervolume_rank_over_cells():
    big, small, none = np.array([[0.5, 0.5]]), np.array([[0.1, 0.1]]), np.zeros((0, 2))
    cells = {  # (method, forget) -> offset -> (points, target utility, target forget quality)
        ("a", "npo"): {"0": (big, 0.8, 1e-6), "180": (none, 0.8, 1e-6)},
        ("b", "npo"): {"0": (small, 0.8, 1e-6), "180": (small, 0.8, 1e-6)},
        ("a", "ga"): {"0": (big, 0.8, 1e-6)},
        ("b", "ga"): {"0": (big, 0.8, 1e-6)},          # a tie shares rank 1.5
        ("a", "wga"): {"0": (none, 0.8, 1e-6)},        # not a round-3 method-study objective: not ranked
    }
    best, ranks = mt.best_method(cells)
    # a: ranks 1 (npo o0), 2 (npo o180), 1.5 (ga o0); b: 2, 1, 1.5
    assert ranks == {"a": 1.5, "b": 1.5} and best == "a"  # the tie goes to the larger summed hypervolume
    cells[("b", "npo")]["0"] = (big * 2, 0.8, 1e-6)
    assert mt.best_method(cells)[0] == "b"
