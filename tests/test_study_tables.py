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
