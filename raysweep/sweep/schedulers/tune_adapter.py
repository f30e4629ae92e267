"""MO-ASHA in Ray Tune: ``tune_scheduler`` wraps the rung logic (``mo_asha.MOASHARungs``, pure
and unit-tested) in Tune's ``TrialScheduler`` contract, and with ``promotion: pause`` or
``synchronous`` also chooses which paused trial Tune resumes and hands concurrency slots between
paused trials and the searcher."""

from __future__ import annotations

from typing import Optional

from raysweep.reporting.constraint import RetentionConstraint
from raysweep.sweep.schedulers.mo_asha import PAUSE, STOP, MOASHARungs


def tune_scheduler(rungs: MOASHARungs, constraint: Optional[RetentionConstraint] = None,
                   max_concurrent: Optional[int] = None, num_trials: Optional[int] = None):
    """A Tune ``FIFOScheduler`` whose ``on_trial_result`` asks ``rungs``. Results carry the
    evaluation along the run as ``eval/<metric>`` at ``step``; other results pass through.
    ``constraint`` judges the ``eval/*`` metrics, as the worker's MLflow sink does (None: all feasible).

    ``promotion: pause``: a trial below the cut gets Tune's PAUSE (Tune keeps the checkpoint of
    that report; the trial resumes from it as after a failure) and gives its concurrency slot back
    to the searcher (``limiter``, the sweep's ``ConcurrencyLimiter``), so a new trial starts.
    ``choose_trial_to_run`` resumes the trial the rungs promote before any new one, within
    ``max_concurrent``; once all ``num_trials`` exist and none runs, waits or is promotable, the
    paused ones are stopped (and recorded as stopped by ``record.py``). ``promotion: synchronous``
    works the same way; a trial that errors no longer holds its rung (``on_trial_error``), and a
    rung held by a trial lost without a word is decided with what reached it once nothing runs."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.utils import flatten_dict

    class MOASHAScheduler(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.rungs = rungs
            self.constraint = constraint
            self.limiter = None  # the searcher's ConcurrencyLimiter, set by the driver
            self.reserved = None  # the paused trial whose slot waits for it

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            keys = [f"eval/{m}" for m in self.rungs.objectives]
            if not all(k in result for k in keys) or "step" not in result:
                return TrialScheduler.CONTINUE
            feasible = self.constraint is None or self.constraint.judge_evaluation(result)["eval/feasible"] > 0
            group = (trial.config or {}).get(self.rungs.stratify) if self.rungs.stratify else None
            tie = [result.get(f"eval/{m}", float("nan")) for m in self.rungs.tie_metrics or {}]
            decision = self.rungs.on_result(trial.trial_id, int(result["step"]), [result[k] for k in keys], feasible,
                                            group=group, tie=tie)
            if decision == PAUSE:
                self._slot(trial.trial_id, free=True)
            self._reserve()
            if decision == PAUSE:
                return TrialScheduler.PAUSE
            return TrialScheduler.STOP if decision == STOP else TrialScheduler.CONTINUE

        def on_trial_add(self, tune_controller, trial):
            self.rungs.add(trial.trial_id)  # the searcher's order: how a synchronous rung breaks ties
            super().on_trial_add(tune_controller, trial)

        def on_trial_complete(self, tune_controller, trial, result):
            self.rungs.ended(trial.trial_id)
            super().on_trial_complete(tune_controller, trial, result)

        def on_trial_error(self, tune_controller, trial):
            # Tune also calls this before retrying a trial (train.max_failures): only a trial that
            # will not be retried has ended, and a synchronous rung must not wait for it
            if not trial.should_recover():
                self.rungs.ended(trial.trial_id)
            super().on_trial_error(tune_controller, trial)

        def _slot(self, trial_id: str, free: bool) -> None:
            """A paused trial holds no concurrency slot; a resumed one takes its slot back (and
            the searcher is told of its end through the slot as usual)."""
            live = getattr(self.limiter, "live_trials", None)
            if live is None:
                return
            if free and trial_id in live:
                live.discard(trial_id)
                self.limiter.num_unfinished_live_trials -= 1
            elif not free and trial_id not in live:
                live.add(trial_id)
                self.limiter.num_unfinished_live_trials += 1

        def _reserve(self) -> None:
            """The slot of the trial the rungs promote next is kept from the searcher: promoted
            trials go before new ones (ASHA)."""
            want = self.rungs.next_promotion()
            if want != self.reserved:
                if self.reserved is not None:
                    self._slot(self.reserved, free=True)
                if want is not None:
                    self._slot(want, free=False)
                self.reserved = want

        def choose_trial_to_run(self, tune_controller):
            trials = tune_controller.get_trials()
            if self.rungs.promotion == "stop":
                return super().choose_trial_to_run(tune_controller)
            by_id = {t.trial_id: t for t in trials}
            busy = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
            self._reserve()
            if max_concurrent is None or busy < max_concurrent:
                promoted = by_id.get(self.rungs.next_promotion())
                if promoted is not None and promoted.status == Trial.PAUSED:
                    self.rungs.resume(promoted.trial_id)
                    self._slot(promoted.trial_id, free=False)
                    self.reserved = None  # its slot is its own again
                    return promoted
            for trial in trials:
                if trial.status == Trial.PENDING:
                    return trial
            for trial in trials:  # paused before a `raysweep resume`: its rung decides again when it gets there
                if (trial.status == Trial.PAUSED and trial.trial_id not in self.rungs.paused
                        and trial.trial_id not in self.rungs.stopped and busy < (max_concurrent or busy + 1)):
                    self._slot(trial.trial_id, free=False)
                    return trial
            waiting = [by_id[t] for t in list(self.rungs.paused) if t in by_id]
            all_there = num_trials is None or len(trials) >= num_trials
            idle = not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
            if (waiting and all_there and idle and self.rungs.promotion == "synchronous"
                    and self.rungs.next_promotion() is None and self.rungs.force_settle()):
                return self.choose_trial_to_run(tune_controller)  # a rung held by a trial lost without a word
            if waiting and all_there and idle and self.rungs.next_promotion() is None:
                self.rungs.stop_paused()  # nothing left can promote them: the sweep ends here
                for trial in waiting:
                    if self.limiter is not None:  # the searcher hears of its end with its last result
                        self._slot(trial.trial_id, free=False)
                        self.limiter.on_trial_complete(trial.trial_id, result=flatten_dict(trial.last_result or {}))
                    tune_controller.stop_trial(trial)
            return None

        def debug_string(self) -> str:
            return (f"MO-ASHA: rungs at steps {self.rungs.milestones}, {len(self.rungs.stopped)} trials stopped, "
                    f"{len(self.rungs.paused)} paused" + (f", {len(self.rungs.revived)} resumed by the budget"
                                                          if self.rungs.budget else ""))

    return MOASHAScheduler()
