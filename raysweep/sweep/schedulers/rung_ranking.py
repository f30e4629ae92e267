"""How MO-ASHA ranks the trials recorded at a rung, best first (``mo_asha.MOASHARungs.ranking``).

Each entry carries ``trial``, ``values`` (one point, or with ``trajectory`` ranking the tuple of
points the trial is judged by), ``feasible``, ``tie`` (its ``tie_metrics``, smaller better: exact
ties go by them) and ``order`` (its arrival, or its place in the searcher's order in a synchronous
decision). Pure functions of the entries and the objectives' directions."""

from __future__ import annotations

import re

import numpy as np

from raysweep.sweep.pareto import (crowding_distances, hypervolume, hypervolume_contributions,
                                   nondominated_ranks, to_maximise)


def rank_last_points(entries: list, directions: list[str], tie_break: str) -> list[str]:
    """One point per trial: feasible before infeasible, then non-domination rank, then within a
    rank the larger hypervolume contribution (or crowding distance), then ``tie``, then ``order``."""
    pts = np.array([e.values for e in entries], dtype=np.float64)
    finite = np.all(np.isfinite(pts), axis=1)
    feasible = np.array([e.feasible for e in entries]) & finite
    rank = np.full(len(entries), np.iinfo(np.int64).max // 2, dtype=np.int64)
    spread = np.zeros(len(entries))
    for group in (feasible, ~feasible & finite):  # infeasible ones are ranked among themselves, after
        idx = np.flatnonzero(group)
        if not len(idx):
            continue
        sub_rank = nondominated_ranks(pts[idx], directions)
        offset = 0 if group is feasible else len(entries) + 1
        rank[idx] = sub_rank + offset
        ref = reference_beyond(pts[idx], directions)  # one per group, shared by its ranks
        for r in np.unique(sub_rank):
            members = idx[sub_rank == r]
            if tie_break == "crowding":
                spread[members] = crowding_distances(pts[members], directions)
            else:
                spread[members] = hypervolume_contributions(pts[members], directions, ref)
    keys = [(int(rank[i]), -float(spread[i]), e.tie, e.order) for i, e in enumerate(entries)]
    return [entries[i].trial for i in sorted(range(len(entries)), key=lambda i: keys[i])]


def rank_trajectories(entries: list, directions: list[str]) -> list[str]:
    """Trials by the best rank of their feasible points among all such points at the rung, then
    by the hypervolume their points alone add, then ``tie``; trials with no feasible point last."""
    owners = [i for i, e in enumerate(entries) for _ in e.values]
    if not owners:
        return [e.trial for e in sorted(entries, key=lambda e: (e.tie, e.order))]
    pts = np.array([v for e in entries for v in e.values], dtype=np.float64)
    point_rank = nondominated_ranks(pts, directions)
    owners = np.array(owners)
    ref = reference_beyond(pts, directions)
    whole = hypervolume(pts, directions, ref)
    keys = []
    for i, e in enumerate(entries):
        mine = owners == i
        if not mine.any():
            keys.append((np.iinfo(np.int64).max, 0.0, e.tie, e.order))
            continue
        alone = whole - (hypervolume(pts[~mine], directions, ref) if (~mine).any() else 0.0)
        keys.append((int(point_rank[mine].min()), -alone, e.tie, e.order))
    return [entries[i].trial for i in sorted(range(len(entries)), key=lambda i: keys[i])]


def reference_beyond(all_pts: np.ndarray, directions: list[str]) -> list[float]:
    """A little beyond the worst recorded value of each objective, in its own direction."""
    worst = to_maximise(all_pts, directions).min(axis=0)
    span = to_maximise(all_pts, directions).max(axis=0) - worst
    ref_max = worst - np.where(span > 0, 0.1 * span, 1.0)
    return list(ref_max * np.array([1.0 if d == "max" else -1.0 for d in directions]))


def natural_order(name: str) -> tuple:
    """A fixed order of trial names, digits compared as numbers (the benchmark's replay names trials
    ``"0"``..``"23"``: ``"10"`` after ``"9"``); Tune's ids are hashes, where any fixed order will do."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))
