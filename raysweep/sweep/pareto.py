"""Pareto fronts and hypervolume for mixed min/max objectives (spec 9.5).

Every objective is first turned into "higher is better" (minimised ones are negated); a point
dominates another if it is >= in every objective and > in at least one. The hypervolume is the
measure of the union of boxes between the reference point and each point that is at least as
good as the reference in every objective: exact sweep in 2-D, slicing in higher dimensions.
A row with a NaN objective is unknown, not good: it is never on the front, never dominates, and
never counts in a hypervolume or a nadir.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_maximise(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    for d in directions:
        if d not in ("min", "max"):
            raise ValueError(f"objective direction {d!r} is not allowed (min, max)")
    sign = np.array([1.0 if d == "max" else -1.0 for d in directions])
    return np.asarray(points, dtype=np.float64) * sign


def _known(p: np.ndarray) -> np.ndarray:
    """Rows without a NaN objective (NaN compares false both ways, so it would never be dominated)."""
    return ~np.isnan(p).any(axis=1) if p.size else np.ones(len(p), dtype=bool)


def _lex_descending(p: np.ndarray) -> np.ndarray:
    """Row indices, best first in lexicographic order: a point's dominators all come before it
    (a dominator is >= everywhere and > somewhere, so lexicographically greater)."""
    return np.lexsort(-p.T[::-1]) if len(p) else np.zeros(0, dtype=int)


def _dominated_by(front: np.ndarray, q: np.ndarray) -> bool:
    return bool(np.any(np.all(front >= q, axis=1) & np.any(front > q, axis=1)))


def non_dominated(points, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the Pareto-optimal rows (duplicates of an optimal point all stay).

    Rows are visited best first (lexicographically): each is checked against the front found
    so far only, O(n x front) instead of all pairs - a sweep of 5,000 trials has ~20,000 points
    (issue 28). A row dominated by anything is dominated by some front row (transitivity)."""
    p = to_maximise(points, directions)
    known = _known(p)
    idx = np.flatnonzero(known)
    mask = np.zeros(len(p), dtype=bool)
    if p.ndim == 2 and p.shape[1] == 2:
        mask[idx] = _non_dominated_2d(p[idx])
        return mask
    front = np.empty((0, p.shape[1] if p.ndim == 2 else 0))
    for i in idx[_lex_descending(p[idx])]:
        if not _dominated_by(front, p[i]):
            mask[i] = True
            front = np.vstack([front, p[i]])
    return mask


def _non_dominated_2d(p: np.ndarray) -> np.ndarray:
    """Two objectives, vectorised: in best-first order every earlier row has x' >= x, and one that
    is not a duplicate of the row dominates it exactly when its y' >= y. So a row is on the front
    when its y beats the best y of all rows before its group of duplicates."""
    order = _lex_descending(p)
    q = p[order]
    new_group = np.ones(len(q), dtype=bool)
    new_group[1:] = np.any(q[1:] != q[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(q)), 0))
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(q[:, 1])])[group_start]
    mask = np.zeros(len(p), dtype=bool)
    mask[order] = q[:, 1] > best_before
    return mask


def _hv_max(p: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of maximisation points above ``ref`` (all coordinates > ref)."""
    if len(p) == 0:
        return 0.0
    if p.shape[1] == 1:
        return float(p[:, 0].max() - ref[0])
    if p.shape[1] == 2:
        # spec 9.5: non-dominated points sorted by the first objective descending
        keep = non_dominated(p, ["max", "max"])
        q = np.unique(p[keep], axis=0)
        q = q[np.argsort(-q[:, 0], kind="stable")]
        hv, f_prev = 0.0, ref[1]
        for u, f in q:
            if f > f_prev:
                hv += (u - ref[0]) * (f - f_prev)
                f_prev = f
        return float(hv)
    # slice along the last objective
    order = np.argsort(p[:, -1])
    levels = np.concatenate([[ref[-1]], p[order, -1]])
    hv = 0.0
    for k in range(len(order)):
        height = levels[k + 1] - levels[k]
        if height > 0:
            hv += height * _hv_max(p[order[k:], :-1], ref[:-1])
    return float(hv)


def hypervolume(points, directions: Sequence[str], reference) -> float:
    p = to_maximise(points, directions)
    r = to_maximise(np.asarray(reference, dtype=np.float64)[None, :], directions)[0]
    inside = p[np.all(p > r, axis=1)]
    return _hv_max(inside, r)


def nondominated_ranks(points, directions: Sequence[str]) -> np.ndarray:
    """Non-domination rank of each row (0 = the Pareto front, 1 = the front once 0 is removed, ...);
    rows with a NaN objective share the rank after the last one.

    Efficient non-dominated sort with binary search (Zhang et al. 2015, ENS-BS): rows visited best
    first; a row's rank is the first layer none of whose rows dominates it, and since a row
    dominated in layer k is dominated in every layer before k, that layer is found by bisection."""
    p = to_maximise(points, directions)
    known = _known(p)
    ranks = np.full(len(p), -1, dtype=int)
    idx = np.flatnonzero(known)
    layers: list[np.ndarray] = []
    if p.ndim == 2 and p.shape[1] == 2:
        ranks[idx] = _ranks_2d(p[idx])
        ranks[~known] = ranks[idx].max() + 1 if len(idx) else 0
        return ranks
    for i in idx[_lex_descending(p[idx])]:
        lo, hi = 0, len(layers)
        while lo < hi:
            mid = (lo + hi) // 2
            if _dominated_by(layers[mid], p[i]):
                lo = mid + 1
            else:
                hi = mid
        if lo == len(layers):
            layers.append(np.empty((0, p.shape[1])))
        layers[lo] = np.vstack([layers[lo], p[i]])
        ranks[i] = lo
    ranks[~known] = len(layers)
    return ranks


def _ranks_2d(p: np.ndarray) -> np.ndarray:
    """Two objectives: the same layers in O(n log n). In best-first order a layer's rows have
    falling x and rising y, so the last row put in a layer has its highest y, and the layer
    dominates a later row exactly when that y is >= the row's (unless the two are the same point)."""
    ranks = np.zeros(len(p), dtype=int)
    tops: list[tuple[float, float]] = []  # per layer: its last row, whose y falls from layer to layer
    for i in _lex_descending(p):
        x, y = p[i]
        lo, hi = 0, len(tops)
        while lo < hi:
            mid = (lo + hi) // 2
            if tops[mid][1] >= y and tops[mid] != (x, y):
                lo = mid + 1
            else:
                hi = mid
        if lo == len(tops):
            tops.append((x, y))
        tops[lo] = (x, y)
        ranks[i] = lo
    return ranks


def nadir(points, directions: Sequence[str]) -> list[float]:
    """The worst value of each objective over the rows without NaN (NaN everywhere when there are
    none, so no hypervolume counts): the reference point when the job states none."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, len(directions))
    p = p[_known(p)]
    if not len(p):
        return [float("nan")] * len(directions)
    return [float(p[:, i].min() if d == "max" else p[:, i].max()) for i, d in enumerate(directions)]


def crowding_distances(points, directions: Sequence[str]) -> np.ndarray:
    """NSGA-II crowding distance of each row within the given set (boundary points: inf)."""
    p = to_maximise(points, directions)
    n, m = p.shape if len(p) else (0, 0)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(p[:, j], kind="stable")
        span = p[order[-1], j] - p[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (p[order[2:], j] - p[order[:-2], j]) / span
    return dist


def hypervolume_contributions(points, directions: Sequence[str], reference) -> np.ndarray:
    """Exclusive hypervolume of each row: HV(all) - HV(all but the row)."""
    p = np.asarray(points, dtype=np.float64)
    total = hypervolume(p, directions, reference)
    return np.array([total - hypervolume(np.delete(p, i, axis=0), directions, reference) for i in range(len(p))])
