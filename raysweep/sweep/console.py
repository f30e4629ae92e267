"""What a person watching a sweep reads: one line per trial event and a periodic summary.

A Ray Tune callback in the driver. Trial events come from Tune (start, end, error, retry);
progress of running trials comes from the :class:`~raysweep.reporting.progress.ProgressBoard`
that each trial's rank 0 posts to; the summary recomputes the front of the finished trials.
Ray's own per-step and controller output is silenced by the driver unless ``--verbose``.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

import numpy as np

from raysweep.sweep.pareto import hypervolume, nadir, non_dominated
from raysweep.sweep.space import SearchSpace


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _g(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def describe_config(space: SearchSpace, config: dict) -> str:
    """``sago(alpha=0.356) / ga, lr=0.00145`` from a sampled configuration."""
    over = space.overrides(config)
    parts = []
    for section in ("method", "forget", "retain"):
        block = over.get(f"unlearn.{section}")
        if block:
            params = ", ".join(f"{k}={_g(v)}" for k, v in block.items() if k != "name")
            parts.append(f"{block['name']}({params})" if params else block["name"])
    text = " / ".join(parts)
    rest = ", ".join(f"{k.split('.', 1)[1]}={_g(v)}" for k, v in over.items()
                     if k.split(".", 1)[1] not in ("method", "forget", "retain"))
    return f"{text}, {rest}" if rest else text


def _first_error_line(trial) -> str:
    try:
        path = trial.error_file
        lines = [l.strip() for l in open(path).read().splitlines() if l.strip()] if path else []
        return lines[-1][:300] if lines else "unknown error"
    except OSError:
        return "unknown error"


class SweepConsole:
    """Build with :func:`make_console` (it subclasses Tune's Callback lazily, keeping imports light)."""

    def __init__(self, sweep: str, space: SearchSpace, num_trials: int, objectives: dict[str, str],
                 reference_point: Optional[dict] = None, concurrency: int = 1, board=None,
                 summary_every: float = 30.0, poll_every: float = 1.0, out: TextIO = sys.stderr,
                 now: Callable[[], float] = time.time, max_failures: int = 0):
        self.sweep, self.space, self.num_trials = sweep, space, num_trials
        self.objectives, self.reference_point = objectives, reference_point
        self.concurrency, self.board = max(1, concurrency), board
        self.summary_every, self.poll_every = summary_every, poll_every
        self.out, self.now, self.max_failures = out, now, max_failures
        self.t0 = now()
        self.numbers: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.finished: dict[str, dict] = {}   # trial id -> objectives (feasible ones on the front)
        self.stopped: set[str] = set()
        self.failed: set[str] = set()
        self.durations: list[float] = []
        self._last_summary = self.t0
        self._last_poll = 0.0
        self._seq = 0

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state: streams, clocks and actor
        # handles do not travel (a resumed sweep builds a new console).
        state = self.__dict__.copy()
        state.update(out=None, board=None, now=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out, self.now = sys.stderr, time.time

    # ---- output -------------------------------------------------------------------------------
    def line(self, msg: str) -> None:
        print(f"[{clock(self.now() - self.t0):>7}] {msg}", file=self.out, flush=True)

    def _name(self, trial) -> str:
        tid = trial.trial_id
        if tid not in self.numbers:
            self.numbers[tid] = len(self.numbers) + 1
        return f"trial {self.numbers[tid]}/{self.num_trials} {tid}"

    # ---- Tune hooks -----------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = self.now()
        config = describe_config(self.space, trial.config)
        self.line(f"{self._name(trial)} started" + (f": {config}" if config else ""))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.line(f"{self._name(trial)} failed ({_first_error_line(trial)}); "
                  f"retrying from its last checkpoint (failure {trial.num_failures} of {self.max_failures} allowed)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        took = self.now() - self.started.get(trial.trial_id, self.now())
        self.durations.append(took)
        values = {k: result.get(k) for k in self.objectives}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
        if result.get("stopped_reason"):
            self.stopped.add(trial.trial_id)
            self.line(f"{self._name(trial)} stopped early after {took:.1f}s: {result['stopped_reason']}")
            return
        if not self.objectives:  # a single `raysweep run --ray`: nothing to rank
            self.line(f"{self._name(trial)} finished in {took:.1f}s")
            return
        during = {k: result.get(f"eval/{k}") for k in self.objectives}
        if not shown and all(isinstance(v, float) for v in during.values()):  # the scheduler stopped it
            self.stopped.add(trial.trial_id)
            at = ", ".join(f"{k}={v:.4g}" for k, v in during.items())
            self.line(f"{self._name(trial)} stopped by the scheduler at step {int(result.get('step', 0))} "
                      f"after {took:.1f}s (dominated at its rung): {at}")
            return
        if not shown:
            self.line(f"{self._name(trial)} ended after {took:.1f}s without objectives")
            return
        feasible = result.get("feasible", 1.0) > 0
        if feasible:
            self.finished[trial.trial_id] = values
        self.line(f"{self._name(trial)} finished in {took:.1f}s: {shown}{'' if feasible else ' (infeasible)'}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed.add(trial.trial_id)
        self.line(f"{self._name(trial)} failed: {_first_error_line(trial)}")

    def on_step_end(self, iteration, trials, **info):
        now = self.now()
        if self.board is not None and now - self._last_poll >= self.poll_every:
            self._last_poll = now
            self._show_progress()
        if now - self._last_summary >= self.summary_every:
            self._last_summary = now
            self.line(self.summary(trials))

    def on_experiment_end(self, trials, **info):
        self._show_progress()
        if self.objectives:
            self.line(self.summary(trials, final=True))

    # ---- pieces ---------------------------------------------------------------------------------
    def _show_progress(self) -> None:
        if self.board is None:
            return
        import ray

        try:
            self._seq, posts = ray.get(self.board.since.remote(self._seq), timeout=5)
        except Exception:  # noqa: BLE001 - progress is cosmetic
            return
        for tid, p in sorted(posts.items(), key=lambda kv: kv[1]["seq"]):
            if tid in self.finished or tid in self.stopped or tid in self.failed:
                continue
            n = self.numbers.get(tid)
            total = int(p["total"]) if p.get("total") else None
            where = f"step {p['step']}/{total}" if total else f"step {p['step']}"
            losses = ", ".join(f"{label} {p[k]:.3g}" for k, label in
                               (("loss_forget", "forget loss"), ("loss_retain_0", "retain loss")) if k in p)
            speed = f", {p['step_seconds']:.2f} s/step" if "step_seconds" in p else ""
            self.line(f"trial {n}/{self.num_trials} {tid} {where}: {losses}{speed}" if n else f"trial {tid} {where}")

    def front(self) -> tuple[int, Optional[float]]:
        if not self.finished:
            return 0, None
        names = list(self.objectives)
        directions = [self.objectives[k] for k in names]
        pts = np.array([[v[k] for k in names] for v in self.finished.values()], dtype=float)
        mask = non_dominated(pts, directions)
        if self.reference_point:
            ref = [self.reference_point[k] for k in names]
        else:  # the nadir of the finished trials, as `raysweep pareto` does without a stated point
            ref = nadir(pts, directions)
        return int(mask.sum()), float(hypervolume(pts[mask], directions, ref))

    def summary(self, trials, final: bool = False) -> str:
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        running = sum(t.status == "RUNNING" for t in trials)
        pending = max(0, self.num_trials - len(ended) - running)
        size, hv = self.front()
        elapsed = self.now() - self.t0
        parts = [f"{len(ended)}/{self.num_trials} done"]
        extra = [f"{len(self.stopped)} stopped early"] if self.stopped else []
        extra += [f"{len(self.failed)} failed"] if self.failed else []
        if extra:
            parts[0] += f" ({', '.join(extra)})"
        if not final:
            parts += [f"{running} running", f"{pending} pending"]
        parts.append(f"front {size} point{'s' if size != 1 else ''}" + (f", HV {hv:.4g}" if hv is not None else ""))
        parts.append(f"elapsed {clock(elapsed)}")
        if not final and self.durations and (running or pending):
            mean = sum(self.durations) / len(self.durations)
            waves = (pending + running) / self.concurrency
            parts.append(f"ETA ~{clock(mean * waves)}")
        return f"sweep {self.sweep}{' finished' if final else ''}: " + "; ".join(parts)


def make_console(*args, **kwargs):
    """A :class:`SweepConsole` that is also a ``ray.tune.Callback``."""
    from ray.tune import Callback

    cls = type("SweepConsoleCallback", (SweepConsole, Callback), {})
    return cls(*args, **kwargs)
