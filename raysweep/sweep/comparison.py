"""Comparing methods across sweeps (the study, issue 27): a hypervolume that does not reward
collapse, bootstrap intervals over trials, and the Friedman test with Nemenyi's critical difference.

* ``normalised_hv``: forget quality on a log10 axis and utility relative to the target. A point
  scores ``x = log10(FQ / FQ_target) / log10(1 / FQ_target)`` (0 at the target's forget quality,
  1 at FQ = 1) and ``y = (MU / MU_target - floor) / (1 - floor)`` (0 at the stated utility floor,
  1 at the target's utility); the hypervolume is taken against (0, 0), so a point that forgets
  less than the target or keeps less than the floor adds nothing. On a linear FQ axis with
  reference (0, 0) a collapsed model at FQ 0.99 and 16% utility outscored every careful one
  (methods.md 9.5).
* ``bootstrap_ci``: percentile interval of a statistic of a set of trials, resampling trials.
* ``friedman``: the Friedman chi-square over blocks (rows) x treatments (columns), mid-ranks for
  ties and the tie correction (as ``scipy.stats.friedmanchisquare``), with the mean ranks.
* ``nemenyi_cd``: the critical difference of mean ranks (Demsar 2006): two treatments differ at
  level ``alpha`` when their mean ranks differ by more than it.
* ``holm``: Holm's step-down adjustment of several p-values (e.g. Wilcoxon tests against one baseline).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from raysweep.sweep.pareto import hypervolume


def normalised_points(points, target_fq: float, target_mu: float, floor: float) -> np.ndarray:
    """(FQ, MU) rows -> (x, y) as in the module docstring; ``floor`` in [0, 1) of the target's utility."""
    if not 0 < target_fq < 1:
        raise ValueError(f"target_fq: {target_fq!r} is not allowed (a forget quality in (0, 1))")
    if not target_mu > 0:
        raise ValueError(f"target_mu: {target_mu!r} is not allowed (a utility > 0)")
    if not 0 <= floor < 1:
        raise ValueError(f"floor: {floor!r} is not allowed (a fraction of the target's utility in [0, 1))")
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    fq = np.clip(p[:, 0], 1e-300, None)  # FQ 0 (a p-value underflow) is as far below the target as it gets
    x = np.log10(fq / target_fq) / math.log10(1.0 / target_fq)
    y = (p[:, 1] / target_mu - floor) / (1.0 - floor)
    return np.column_stack([x, y])


def normalised_hv(points, target_fq: float, target_mu: float, floor: float) -> float:
    q = normalised_points(points, target_fq, target_mu, floor)
    q = q[(q[:, 0] > 0) & (q[:, 1] > 0)]  # below the reference point: no area
    return float(hypervolume(q, ["max", "max"], [0.0, 0.0])) if len(q) else 0.0


def bootstrap_ci(trials: Sequence, stat: Callable[[list], float], n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float, float]:
    """(statistic of all trials, lower, upper): the percentile interval over ``n_boot`` resamples of
    the trials with replacement (numpy's default_rng(seed); ``alpha`` two-sided)."""
    trials = list(trials)
    if not trials:
        raise ValueError("trials: [] is not allowed (at least one trial)")
    rng = np.random.default_rng(seed)
    n = len(trials)
    boots = np.array([stat([trials[i] for i in rng.integers(0, n, n)]) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(stat(trials)), float(lo), float(hi)


def ranks(row: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Ranks within one block, 1 = best; ties share the mean of their ranks."""
    v = np.asarray(row, dtype=float)
    v = -v if higher_is_better else v
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def friedman(table, higher_is_better: bool = True) -> tuple[float, float, np.ndarray]:
    """(chi-square, p-value, mean rank per treatment) over ``table[block][treatment]``."""
    from scipy.stats import chi2

    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 3:
        raise ValueError(f"table: shape {t.shape} is not allowed (at least 2 blocks x 3 treatments)")
    n, k = t.shape
    r = np.array([ranks(row, higher_is_better) for row in t])
    sums = r.sum(axis=0)
    stat = 12.0 / (n * k * (k + 1)) * float(np.sum(sums ** 2)) - 3.0 * n * (k + 1)
    # Tie correction: 1 - sum(t^3 - t) / (n k (k^2 - 1)) over the tie groups of every block.
    ties = sum(c ** 3 - c for row in t for c in np.unique(row, return_counts=True)[1])
    stat /= 1.0 - ties / (n * k * (k * k - 1))
    return float(stat), float(chi2.sf(stat, k - 1)), sums / n


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Critical difference of mean ranks for ``k`` treatments over ``n`` blocks:
    ``q_alpha sqrt(k (k + 1) / (6 n))``, q_alpha the studentized range quantile / sqrt(2)."""
    from scipy.stats import studentized_range

    if k < 2 or n < 1:
        raise ValueError(f"k, n: ({k}, {n}) is not allowed (at least 2 treatments and 1 block)")
    q = float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (capped at 1, kept monotone)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        adjusted[j] = running
    return adjusted.tolist()
