"""raysweep.sweep.comparison: normalised hypervolume, bootstrap intervals, Friedman + Nemenyi,
each against a reference computed independently here (scipy, Demsar's table, hand arithmetic)."""

import math

import numpy as np
import pytest
from scipy.stats import friedmanchisquare

from raysweep.sweep.comparison import (bootstrap_ci, friedman, holm, nemenyi_cd, normalised_hv, normalised_points,
                                      ranks)


def test_normalised_axes_log_forget_quality_and_utility_over_the_floor():
    # target FQ 1e-4, MU 0.8, floor 0.5: FQ 1e-2 is half-way (in log10) from the target to FQ 1,
    # MU 0.6 = 0.75 of the target -> (0.75 - 0.5) / 0.5 = 0.5.
    q = normalised_points([[1e-2, 0.6], [1.0, 0.8], [1e-4, 0.2]], 1e-4, 0.8, 0.5)
    assert np.allclose(q, [[0.5, 0.5], [1.0, 1.0], [0.0, -0.5]])


def test_normalised_hv_gives_collapse_nothing_and_a_careful_point_its_rectangle():
    target_fq, target_mu, floor = 1e-4, 0.8, 0.5
    collapsed = [[0.99, 0.16 * 0.8]]           # forgets all, keeps 16%: below the floor
    careful = [[1e-2, 0.6]]                    # (0.5, 0.5) on the normalised axes
    assert normalised_hv(collapsed, target_fq, target_mu, floor) == 0.0
    assert normalised_hv(careful, target_fq, target_mu, floor) == pytest.approx(0.25)
    # Two points: the union of their rectangles, 0.5*0.5 + (0.75-0.5)*0.25 (hand arithmetic).
    two = careful + [[10 ** -1, 0.8 * (0.5 + 0.5 * 0.25)]]   # x = 0.75, y = 0.25
    assert normalised_hv(two, target_fq, target_mu, floor) == pytest.approx(0.25 + 0.25 * 0.25)
    # Less forgetting than the target: no area.
    assert normalised_hv([[1e-5, 0.8]], target_fq, target_mu, floor) == 0.0


def test_bad_normalisation_input_names_the_field():
    with pytest.raises(ValueError, match="floor: 1.0 is not allowed"):
        normalised_hv([[0.1, 0.5]], 1e-4, 0.8, 1.0)
    with pytest.raises(ValueError, match="target_fq: 0.0 is not allowed"):
        normalised_hv([[0.1, 0.5]], 0.0, 0.8, 0.5)


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_means():
    vals = [0.1, 0.4, 0.35, 0.8, 0.2]
    est, lo, hi = bootstrap_ci(vals, lambda t: float(np.mean(t)), n_boot=500, seed=3)
    # Independent re-implementation: the same generator draws the same index vectors.
    rng = np.random.default_rng(3)
    boots = [np.mean(np.array(vals)[rng.integers(0, 5, 5)]) for _ in range(500)]
    assert est == pytest.approx(np.mean(vals))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])))
    assert lo <= est <= hi


def test_ranks_share_ties():
    assert ranks([0.3, 0.9, 0.3, 0.1]).tolist() == [2.5, 1.0, 2.5, 4.0]


def test_friedman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    table = rng.random((6, 5))
    table[2, 1] = table[2, 3]            # a tie in one block
    table[4, :] = [0.0, 0.0, 0.0, 0.5, 0.5]  # zeros: methods that never left the target
    stat, p, mean_ranks = friedman(table)
    ref = friedmanchisquare(*table.T)
    assert stat == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    # Mean ranks, 1 = best (higher value): block-wise hand ranks averaged.
    assert mean_ranks == pytest.approx(np.mean([ranks(r) for r in table], axis=0))


def test_nemenyi_cd_matches_demsar_table():
    # Demsar (2006), Table 5a: q_0.05 = 1.960 (k=2), 2.343 (3), 2.850 (6), 3.102 (9), 3.164 (10).
    for k, q in [(2, 1.960), (3, 2.343), (6, 2.850), (9, 3.102), (10, 3.164)]:
        assert nemenyi_cd(k, 1) == pytest.approx(q * math.sqrt(k * (k + 1) / 6), abs=2e-3)
    # The figure: 6 methods over 6 cells -> about 3.1 ranks.
    assert nemenyi_cd(6, 6) == pytest.approx(2.850 * math.sqrt(42 / 36), abs=2e-3)


def test_holm_adjusts_step_down_in_input_order():
    # Hand arithmetic: sorted 0.01, 0.02, 0.04, 0.30 -> x4, x3, x2, x1 = 0.04, 0.06, 0.08, 0.30.
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    # Monotone: a smaller raw p never gets a larger adjusted one; capped at 1.
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.6, 0.7]) == pytest.approx([1.0, 1.0, 1.0])
