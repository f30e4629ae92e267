"""Multi-objective asynchronous successive halving (MO-ASHA) for Ray Tune.

Rungs sit at ``grace_period * reduction_factor**k`` unlearning steps (below ``max_steps``), or at
``rung_levels`` when given (Syne Tune's name: the steps apart from the fraction kept). A
trial reaches a rung at its first evaluation (``eval.every``) at or after the rung's step; the
trials recorded at that rung so far are ranked and the trial continues only if it is among the
best ``ceil(n / reduction_factor)`` of them (so the first trial at a rung always continues, as in
ASHA). Ranking, best first:

feasible before infeasible (the retention constraint), then non-domination rank over the
objectives (each in its own direction), then within a rank the larger hypervolume contribution
(or crowding distance), then ``tie_metrics`` (below), then arrival order.

``rank_by`` says what of a trial is ranked. ``last``: its evaluation at the rung, as ASHA does.
``trajectory``: every feasible point it has been evaluated at so far - each one is a candidate
on the sweep's front (evaluation along the run), and unlearning trajectories are not monotone, so
a trial whose best trade-off came earlier is not judged by a worse last point. A trial's rank is
the best non-domination rank of its points among all points of the trials at the rung; ties go to
the larger loss of hypervolume were its points removed. ``keep_front``: a trial with a point on
the sweep's front as it stands (every evaluation of every trial so far) always continues.

``extrapolate`` (issue 26, > 0): a trial is also judged by an optimistic point - the one its last
two evaluations predict at ``(1 + extrapolate)`` times its steps, straight along their direction,
clipped per objective to the range every evaluation so far has spanned - ranked beside the points
it has shown (max with what it has shown). With ``keep_front`` the points a trial is ranked by at
the rung (its last or trajectory points and the predicted one) are what must be on the front.

``promotion: pause`` is ASHA's promotion variant: a trial below the cut is PAUSED (its checkpoint
kept), not stopped, and is resumed (``next_promotion``) when it enters the best
``floor(n / reduction_factor)`` of its rung as more trials report; paused trials are promoted
before new trials start. When nothing is promotable and no trial is left to start, the sweep ends
and the paused trials count as stopped (``stop_paused``). ``promotion: stop`` (the default) is
ASHA's stopping variant, keeping ``ceil(n / reduction_factor)``.

``promotion: synchronous`` is successive halving (SHA) with the same ranking: every trial arriving
at a rung is paused until the rung is complete - every one of the sweep's ``num_trials`` trials
(rung 0), or every trial promoted from the rung below, has reached it or ended - and then the rung
is decided once: the best ``max(1, floor(n / reduction_factor))`` (and, with ``keep_front``, the
trials on the front as it stands then) are promoted, best first; the rest wait unpromoted and
count as stopped when the sweep ends (``stop_paused``). Points are judged, and ties broken by the
searcher's order (``add``), at that moment: the decisions do not depend on the order trials arrive
in (``tests/sweep/schedulers/test_mo_asha_sync.py`` replays trajectories under random timings).

``stratify`` (issue 26; a searched choice, ``method``): every cut also keeps, beside the best of
all the trials at the rung, the best ``1 / reduction_factor`` of each value's trials (at least one
each: the same count rule as the overall cut, applied to the value's trials). Methods move at
their own pace - SAGO and PCGrad-R keep the retain side first and forget late - so ranking a rung's
trials against faster methods alone stops the slow method's best before its trade-off shows
(BENCHMARKS.md, "Search that pays"). A trial reported without a value meets the overall cut only.

``budget`` (issue 26; synchronous only): a share of the steps FIFO would train - every trial to
``max_steps``, one that ended by itself (the retain-loss guard, an error) to where it ended. Once
the last rung is decided, the steps not committed (the trials promoted there to their end, the
others to where they wait or ended) resume waiting trials to their end (``revived``): the lowest
rung first, where trials were judged on the least evidence, each rung's best first, one that does
not fit passed over for a cheaper one. A function of the rungs' decisions and of the trials that
ended before the last rung was decided: a live sweep trains what its replay does.

``tie_metrics`` (issue 26; ``{metric: min|max}``): trials tied on rank and hypervolume contribution
are ordered by these evaluation metrics at their arrival at the rung, in turn, each in its
direction, before arrival order. Coarse objectives tie exactly: ROUGE-L on a few questions leaves
a slow trial's first point at the target model's, while its forget answer probability has moved.

``MOASHARungs`` is the decision logic alone (pure, unit-tested); ``tune_adapter.py`` puts it
behind Tune's ``TrialScheduler`` contract (``on_trial_result`` -> CONTINUE, PAUSE or STOP).

Why one module: the three promotion modes, stratifying and the budget read and write one state
(each trial's evaluations, the rungs' members, what waits, what was decided), which a rebuilt
sweep must reach again exactly; ranking, the pure part, is apart (``rung_ranking.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from raysweep.sweep.pareto import nondominated_ranks
from raysweep.sweep.schedulers.rung_ranking import natural_order, rank_last_points, rank_trajectories

CONTINUE, STOP, PAUSE = "CONTINUE", "STOP", "PAUSE"


@dataclass
class _Entry:
    trial: str
    values: tuple
    feasible: bool
    order: int
    tie: tuple = ()  # ``tie_metrics`` at the arrival, signed so that smaller is better


@dataclass
class MOASHARungs:
    objectives: dict  # name -> "min" | "max", in order
    max_steps: int
    grace_period: int = 8
    reduction_factor: float = 2.0
    tie_break: str = "hypervolume"
    rank_by: str = "last"                        # "last" | "trajectory"
    keep_front: bool = False                     # never stop a trial with a point on the sweep's front so far
    extrapolate: float = 0.0                     # also judge the point predicted at (1 + x) times the steps
    promotion: str = "stop"                      # "stop" | "pause" (ASHA's promotion variant) | "synchronous"
    num_trials: Optional[int] = None             # the sweep's trials (synchronous: when rung 0 is complete)
    rung_levels: Optional[Sequence[int]] = None  # the rungs' steps, instead of grace_period * reduction_factor**k
    stratify: Optional[str] = None               # a searched choice (``method``): each value's best also kept
    budget: Optional[float] = None               # synchronous: the share of FIFO's steps to train
    tie_metrics: Optional[dict] = None           # metric -> "min" | "max": orders exact ties, in turn
    rungs: dict = field(default_factory=dict)    # rung step -> [_Entry]
    history: dict = field(default_factory=dict)  # trial -> [(values, feasible)] of every evaluation
    reached: dict = field(default_factory=dict)  # trial -> highest rung step recorded
    stopped: dict = field(default_factory=dict)  # trial -> rung step where it was stopped
    paused: dict = field(default_factory=dict)   # trial -> rung step where it waits for promotion
    steps: dict = field(default_factory=dict)    # trial -> the step of each evaluation in history
    gone: set = field(default_factory=set)       # trials that ended by themselves (or failed)
    decided: dict = field(default_factory=dict)  # synchronous: complete rung -> its promoted trials, best first
    groups: dict = field(default_factory=dict)   # trial -> its value of ``stratify``
    revived: dict = field(default_factory=dict)  # trial -> the rung it waited at when the budget resumed it
    created: dict = field(default_factory=dict)  # trial -> its place in the searcher's order (ties go to earlier)
    _arrivals: int = 0

    def __post_init__(self):
        if self.reduction_factor <= 1:
            raise ValueError(f"mo_asha reduction_factor: {self.reduction_factor} is not allowed (> 1)")
        if not (self.extrapolate >= 0 and math.isfinite(self.extrapolate)):
            raise ValueError(f"mo_asha extrapolate: {self.extrapolate} is not allowed (a finite number >= 0)")
        if self.stratify is not None and not (isinstance(self.stratify, str) and self.stratify):
            raise ValueError(f"mo_asha stratify: {self.stratify!r} is not allowed (the name of a searched choice, "
                             "e.g. method)")
        if self.promotion not in ("stop", "pause", "synchronous"):
            raise ValueError(f"mo_asha promotion: {self.promotion!r} is not allowed (stop, pause, synchronous)")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError(f"mo_asha budget: {self.budget} is not allowed (a share of the full sweep's steps, "
                             "> 0 and <= 1)")
        if self.budget is not None and self.promotion != "synchronous":
            raise ValueError(f"mo_asha budget: {self.budget} is not allowed with promotion: {self.promotion} "
                             "(synchronous only: its steps left are known once the last rung is decided)")
        if self.tie_metrics is not None and not (
                isinstance(self.tie_metrics, dict) and self.tie_metrics
                and all(isinstance(k, str) and v in ("min", "max") for k, v in self.tie_metrics.items())):
            raise ValueError(f"mo_asha tie_metrics: {self.tie_metrics!r} is not allowed (a mapping of evaluation "
                             "metrics to min or max)")
        if self.promotion == "synchronous" and not (self.num_trials and self.num_trials > 0):
            raise ValueError(f"mo_asha num_trials: {self.num_trials!r} is not allowed with promotion: synchronous "
                             "(the number of the sweep's trials, > 0: rung 0 is complete when all have reached it)")
        if self.rung_levels is not None:
            levels = [int(x) for x in self.rung_levels]
            if not levels or levels[0] <= 0 or any(b <= a for a, b in zip(levels, levels[1:])) \
                    or levels[-1] >= self.max_steps:
                raise ValueError(f"mo_asha rung_levels: {list(self.rung_levels)} is not allowed (increasing steps, "
                                 f"> 0 and < the trial's {self.max_steps} steps)")
            self.milestones = levels
            return
        steps, k = [], 0
        while True:
            s = int(round(self.grace_period * self.reduction_factor ** k))
            if s >= self.max_steps:
                break
            if not steps or s > steps[-1]:
                steps.append(s)
            k += 1
        self.milestones = steps

    @property
    def directions(self) -> list[str]:
        return list(self.objectives.values())

    def on_result(self, trial: str, step: int, values: Sequence[float], feasible: bool = True,
                  decide: bool = True, group=None, tie: Sequence[float] = ()) -> str:
        """An evaluation of ``trial`` at ``step``: record it at every rung newly reached, decide
        (``decide=False`` only records: rebuilding the rungs from MLflow on resume). A trial below
        the cut is stopped (STOP) or, with ``promotion: pause``, paused (PAUSE). ``group``: the
        trial's value of ``stratify`` (ignored without it); ``tie``: its ``tie_metrics`` at this
        evaluation, in their order (a missing one: NaN, ordered last)."""
        if self.stratify is not None and group is not None:
            self.groups[trial] = group
        if trial in self.stopped:
            return STOP
        if trial in self.paused:
            return PAUSE
        self.history.setdefault(trial, []).append((tuple(float(v) for v in values), bool(feasible)))
        self.steps.setdefault(trial, []).append(int(step))
        decision = CONTINUE
        for rung in self.milestones:
            if rung > step or rung <= self.reached.get(trial, 0):
                continue
            self.reached[trial] = rung
            if trial in self.revived:  # resumed by the budget past decided rungs: a member of none
                continue
            self._arrivals += 1
            if self.rank_by == "trajectory" or self.extrapolate:  # a set of points, fixed as of this rung
                kept = self._judged_points(trial)
                entry = _Entry(trial, kept, bool(kept), self._arrivals, self._tie_key(tie))
            else:
                entry = _Entry(trial, tuple(float(v) for v in values), bool(feasible), self._arrivals,
                               self._tie_key(tie))
            self.rungs.setdefault(rung, []).append(entry)
            if self.promotion == "synchronous":
                self._settle()  # rebuilding too: a rung is judged on what was seen when it completed
                if not decide:
                    continue
                if rung not in self.decided:
                    self.paused[trial] = rung
                    decision = PAUSE
                    break
                if trial not in self.decided[rung] and trial not in self.revived:
                    self.stopped[trial] = rung
                    decision = STOP
                    break
                continue
            if decide and not self._promotable(rung, trial):
                if self.promotion == "pause":
                    self.paused[trial] = rung
                    decision = PAUSE
                else:
                    self.stopped[trial] = rung
                    decision = STOP
                break
        return decision

    def _tie_key(self, tie: Sequence[float]) -> tuple:
        """``tie`` signed so that smaller is better; a missing or non-finite value last."""
        if not self.tie_metrics:
            return ()
        tie = list(tie) + [math.nan] * (len(self.tie_metrics) - len(tie))
        return tuple((float(v) if d == "min" else -float(v)) if math.isfinite(float(v)) else math.inf
                     for v, d in zip(tie, self.tie_metrics.values()))

    def next_promotion(self) -> Optional[str]:
        """The paused trial to resume next: one in the best ``floor(n / reduction_factor)`` of its
        rung (or kept by ``keep_front``), the highest rung first, then the best ranked; None if
        none. It stays paused until ``resume`` (Tune may still be saving it)."""
        if self.promotion == "synchronous":
            self._settle()
            for rung in sorted(self.decided, reverse=True):
                for trial in self.decided[rung]:
                    if self.paused.get(trial) == rung:
                        return trial
            return next((t for t in self.revived if t in self.paused), None)
        best = None
        for trial, rung in self.paused.items():
            if self._promotable(rung, trial):
                key = (-rung, self.ranking(rung).index(trial))
                if best is None or key < best[0]:
                    best = (key, trial)
        return None if best is None else best[1]

    def add(self, trial: str) -> None:
        """The searcher created ``trial`` (Tune's ``on_trial_add``): a synchronous rung breaks ties
        by this order, the same live, replayed and rebuilt (Tune's trial ids are hashes)."""
        self.created.setdefault(trial, len(self.created))

    def resume(self, trial: str) -> None:
        del self.paused[trial]

    def ended(self, trial: str) -> None:
        """``trial`` ended by itself (its last step, the sweep's own early stop, or an error): if
        paused, there is nothing left to resume; a synchronous rung no longer waits for it. Tune
        also reports a trial this scheduler stopped as complete: that one did not end by itself."""
        if trial in self.stopped:
            return
        self.gone.add(trial)
        if trial in self.paused:
            self.stopped[trial] = self.paused.pop(trial)
        if self.promotion == "synchronous":
            self._settle()  # a rung that waited on it is decided now, on what was seen by now (resume too)

    def stop_paused(self) -> list[str]:
        """The sweep is ending with nothing promotable: every paused trial is stopped where it waits."""
        done = list(self.paused)
        self.stopped.update(self.paused)
        self.paused.clear()
        return done

    def restored(self) -> None:
        """After the rungs are rebuilt from MLflow (``decide=False``, ``raysweep resume``):
        synchronous decisions are taken again, each rung as the replayed evaluations complete it,
        and a trial whose last evaluation is its arrival at its rung waits there again (promoted
        when the rung is decided and it is among the best, as in the sweep that died).
        (``promotion: pause`` cannot tell a promoted trial from a waiting one this way; its paused
        trials resume and meet their next rung.)"""
        if self.promotion != "synchronous":
            return
        self._settle()
        for trial, rung in self.reached.items():
            steps = self.steps[trial]
            if trial in self.stopped or trial in self.gone or steps[-1] >= self.max_steps:
                continue
            if steps[-1] == next(s for s in steps if s >= rung):  # not past its arrival at the rung
                self.paused[trial] = rung

    def _settle(self) -> None:
        """Synchronous: decide every rung that has become complete, lowest first."""
        for i, rung in enumerate(self.milestones):
            if rung in self.decided:
                continue
            if i == 0:
                known = set(self.history) | self.gone
                if len(known) < self.num_trials:
                    return
                expected = known
            else:
                if self.milestones[i - 1] not in self.decided:
                    return
                expected = set(self.decided[self.milestones[i - 1]])
            if any(self.reached.get(t, 0) < rung and t not in self.gone for t in expected):
                return
            self._decide(rung)

    def force_settle(self) -> bool:
        """Synchronous, when nothing runs and nothing is promotable: decide the lowest open rung
        with the trials that reached it (a trial lost without ``ended`` would hold it forever).
        Whether a rung was decided."""
        for rung in self.milestones:
            if rung not in self.decided:
                if not self.rungs.get(rung):
                    return False
                self._decide(rung)
                self._settle()
                return True
        return False

    def _decide(self, rung: int) -> None:
        """Rank a complete rung once: each member (those promoted from below: rungs rebuilt on resume
        also hold revived trials' later arrivals) judged by its points now, ties by ``created``."""
        i = self.milestones.index(rung)
        entries = [e for e in self.rungs.get(rung, [])
                   if i == 0 or e.trial in self.decided[self.milestones[i - 1]]]
        self.rungs[rung] = entries
        for order, e in enumerate(sorted(entries, key=lambda e: (self.created.get(e.trial, len(self.created)),
                                                                 natural_order(e.trial)))):
            if self.rank_by == "trajectory" or self.extrapolate:
                e.values = self._judged_points(e.trial)
                e.feasible = bool(e.values)
            e.order = order
        order = self.ranking(rung)
        kept = self._cut(order)
        self.decided[rung] = [t for t in order
                              if t not in self.gone and (t in kept or (self.keep_front and self._on_front(t)))]
        if self.budget is not None and rung == self.milestones[-1]:
            self._revive()

    def _revive(self) -> None:
        """Spend the budget's uncommitted steps on waiting trials (``budget`` above)."""
        waiting = {}  # trial -> (rung it was cut at, its step there)
        for rung in self.milestones:
            for e in self.rungs.get(rung, []):
                if e.trial not in self.decided[rung]:
                    waiting[e.trial] = (rung, next(s for s in self.steps[e.trial] if s >= rung))
        committed = sum(self.max_steps if t in self.decided[self.milestones[-1]] else waiting[t][1] if t in waiting
                        else self.steps[t][-1] for t in self.history)  # to the end, to where it waits, or ended
        # what FIFO would train: a trial that ended by itself counts where it ended
        fifo = self.num_trials * self.max_steps - sum(self.max_steps - self.steps.get(t, [0])[-1] for t in self.gone)
        left = self.budget * fifo - committed
        ranked = {rung: self.ranking(rung) for rung in self.milestones}
        for t in sorted((t for t in waiting if t not in self.gone and t not in self.stopped),
                        key=lambda t: (waiting[t][0], ranked[waiting[t][0]].index(t))):
            if self.max_steps - waiting[t][1] <= left:
                left -= self.max_steps - waiting[t][1]
                self.revived[t] = waiting[t][0]

    def _quota(self, n: int) -> int:
        """How many of ``n`` ranked trials a cut keeps: ASHA's stopping variant ``ceil(n / rf)``
        (the first arrival goes on), its promotion variant ``floor`` (the first arrival waits for
        company), successive halving ``floor`` but at least one."""
        if self.promotion == "stop":
            return max(1, math.ceil(n / self.reduction_factor))
        if self.promotion == "pause":
            return math.floor(n / self.reduction_factor)
        return max(1, math.floor(n / self.reduction_factor))

    def _cut(self, order: list[str]) -> set:
        """The best ``_quota(n)`` of ``order`` (a rung's ranking, best first) and, with
        ``stratify``, the best ``_quota`` of each value's trials among them."""
        kept = set(order[:self._quota(len(order))])
        if self.stratify is not None:
            by_value: dict = {}
            for t in order:
                if t in self.groups:
                    by_value.setdefault(self.groups[t], []).append(t)
            for members in by_value.values():
                kept.update(members[:self._quota(len(members))])
        return kept

    def _judged_points(self, trial: str) -> tuple:
        """What ``trial`` is ranked by at a rung: its feasible points so far (``trajectory``) or its
        last one if feasible (``last``), plus the point its last two evaluations predict."""
        hist = self.history[trial]
        ok = _usable(hist)
        if self.rank_by == "last":
            ok = ok[-1:] if ok and ok[-1] is hist[-1][0] else []
        if self.extrapolate and ok and len(hist) >= 2 and hist[-1][1] and self.steps[trial][-1] > self.steps[trial][-2]:
            ok = ok + [self._predicted(trial)]
        return tuple(ok)

    def _predicted(self, trial: str) -> tuple:
        """The point at ``(1 + extrapolate) * step`` on the line through the last two evaluations,
        clipped per objective to the range of every evaluation so far (no objective is promised a
        value no trial has shown: bounded metrics stay in their bounds)."""
        (prev, _), (last, _) = self.history[trial][-2:]
        s0, s1 = self.steps[trial][-2:]
        a, b = np.array(prev), np.array(last)
        predicted = b + (b - a) * self.extrapolate * s1 / (s1 - s0)
        seen = np.array([v for pts in self.history.values() for v, _ in pts], dtype=np.float64)
        seen = seen[np.all(np.isfinite(seen), axis=1)]
        return tuple(float(x) for x in np.clip(predicted, seen.min(axis=0), seen.max(axis=0)))

    def ranking(self, rung: int) -> list[str]:
        """The trials recorded at ``rung``, best first (``rung_ranking.py``)."""
        entries = self.rungs.get(rung, [])
        if not entries:
            return []
        if self.rank_by == "trajectory" or self.extrapolate:
            return rank_trajectories(entries, self.directions)
        return rank_last_points(entries, self.directions, self.tie_break)

    def _promotable(self, rung: int, trial: str) -> bool:
        return trial in self._cut(self.ranking(rung)) or (self.keep_front and self._on_front(trial))

    def _on_front(self, trial: str) -> bool:
        """Whether one of ``trial``'s feasible points (with ``extrapolate``: one it is ranked by,
        its prediction clipped to the range seen by now) is non-dominated among every feasible
        point of every other trial so far: the sweep's front as it stands."""
        if self.extrapolate:
            mine = list(self._judged_points(trial))
        else:
            mine = _usable(self.history.get(trial, []))
        if not mine:
            return False
        others = [v for t, points in self.history.items() if t != trial for v in _usable(points)]
        ranks = nondominated_ranks(np.array(mine + others, dtype=np.float64), self.directions)
        return bool((ranks[:len(mine)] == 0).any())


def _usable(points) -> list:
    """The values of the feasible, finite evaluations among ``(values, feasible)`` pairs: what a
    trial can be ranked or kept by."""
    return [v for v, ok in points if ok and all(math.isfinite(x) for x in v)]
