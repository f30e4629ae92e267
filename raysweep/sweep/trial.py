"""One sweep trial, as a Ray Tune function trainable.

It turns the sampled configuration into a job, opens (or reopens) the trial's MLflow child run,
runs the unlearning loop - inline for one worker, as a Ray Train ``TorchTrainer`` for several -
then records the final metrics, the objectives and the checkpoint, and tells Tune the result.
Per-step metrics never pass through here: the worker's reporter batches them to MLflow itself.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from raysweep.reporting.constraint import RetentionConstraint, recorded_feasible
from raysweep.spec import JobSpec, apply_preset, set_dotted
from raysweep.sweep import tracking
from raysweep.sweep.tracking import checkpoint_tag
from raysweep.sweep.searcher import CONSTRAINT_KEY, finite
from raysweep.sweep.space import SearchSpace


def trial_job(config: dict, ctx: dict) -> JobSpec:
    space = SearchSpace(ctx["space"], ctx["space_source"])
    raw = json.loads(ctx["job_json"])
    for key, value in space.overrides(config).items():
        set_dotted(raw, key, value)
    # A drawn method or objective gets its paper defaults too (unlearn.preset), where unset.
    return JobSpec.model_validate(apply_preset(raw))


def retention_constraint(job: JobSpec, target: dict) -> Optional[RetentionConstraint]:
    """The sweep's constraint with its bound (``metric >= threshold`` is feasible), or None."""
    c = job.sweep.constraint
    if c is None:
        return None
    threshold = c.at_least if c.at_least is not None else c.at_least_fraction_of_target * target[c.metric]
    return RetentionConstraint(c.metric, float(threshold))


def _replay_if_finished(c, ctx: dict, job: JobSpec, trial_id: str) -> bool:
    """Tune's experiment snapshot can lag the trial's real end (driver killed in between): a
    restored trial that already finished replays its recorded result instead of running again."""
    from ray import tune

    done = tracking.find_child(c, ctx["parent_run_id"], ctx["experiment_id"], trial_id)
    if done is None or done.info.status != "FINISHED":
        return False
    m = done.data.metrics
    replay = {k: m[f"objective/{k}"] for k in job.sweep.objectives if f"objective/{k}" in m}
    if done.data.tags.get("raysweep.stopped_by"):  # stopped by the scheduler: it stays stopped
        replay = {f"eval/{k}": m[f"eval/{k}"] for k in job.sweep.objectives if f"eval/{k}" in m}
        replay["step"] = float(done.data.tags.get("raysweep.stopped_at_step", 0))
    if job.sweep.constraint is not None:
        replay["feasible"] = float(recorded_feasible(m.get("feasible"), constrained=True))
        replay.update({CONSTRAINT_KEY: m[CONSTRAINT_KEY]} if CONSTRAINT_KEY in m else {})
    c.set_tag(done.info.run_id, "raysweep.result_replayed", "1")
    tune.report({**replay, "mlflow_run_id": done.info.run_id, "trial_done": 1.0})
    return True


def _run_on_ray_train(job: JobSpec, options, ctx: dict, trial_id: str) -> tuple[dict, Optional[str], list]:
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysweep.distributed.ray_train import build_trainer

    trainer = build_trainer(job, options, name=f"{ctx['sweep']}-{trial_id}",
                            storage_path=os.path.join(ctx["storage"], "train"), callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.metrics or {}, (result.checkpoint.path if result.checkpoint else None), \
        [(int(m.get("step", 0)), ckpt.path, m) for ckpt, m in (result.best_checkpoints or [])
         if any(k.startswith("eval/") for k in m)]


def sweep_trial(config: dict, ctx: dict) -> None:
    import ray
    from ray import tune

    from raysweep.distributed.inline import run_inline, runs_inline
    from raysweep.distributed.worker import WorkerOptions

    entered = time.time()
    trial_id = tune.get_context().get_trial_id()
    job = trial_job(config, ctx)
    c = tracking.client(ctx["tracking_uri"])
    if _replay_if_finished(c, ctx, job, trial_id):
        return
    node = ray.get_runtime_context().get_node_id()
    tags = {"raysweep.method": job.unlearn.method.name, "raysweep.forget": job.unlearn.forget.name, "raysweep.node": node,
            "raysweep.model": job.model.base, tracking.CONFIG_TAG: json.dumps(config, sort_keys=True),
            **tracking.objective_tags(job.sweep.objectives)}
    # Params under one flat name (``alpha``): one MLflow column across methods; the sampler's
    # names are the raysweep.config tag.
    params = SearchSpace(ctx["space"], ctx["space_source"]).flat_params(config)
    run_id = tracking.get_or_create_child(c, ctx["parent_run_id"], ctx["experiment_id"], trial_id, ctx["sweep"],
                                          params, tags)
    options = WorkerOptions(max_retain_loss=job.sweep.stop_if_retain_loss_above,
                            reporting=reporting_options(job, ctx, run_id, trial_id, node),
                            timings={"mlflow_child": time.time() - entered})
    _fault_kill(options, trial_id)
    try:
        if runs_inline(job):
            from raysweep.reporting.ray_report import TuneReporter

            held_once = []

            def on_checkpoint(step, path, m):
                record_point(c, job, run_id, step, path, m)
                if not held_once:
                    held_once.append(step)
                    _fault_pause(PAUSE_AFTER_FIRST_CHECKPOINT)

            recorder = TuneReporter(fixed={"mlflow_run_id": run_id}, on_checkpoint=on_checkpoint)
            metrics, checkpoint = run_inline(job, options, tune_reporter=recorder)
        else:
            metrics, checkpoint, points = _run_on_ray_train(job, options, ctx, trial_id)
            # Ray Train kept the evaluated checkpoints: record them as front candidates now (a
            # trial the scheduler stops on Ray Train keeps its eval/* metrics but not these tags).
            for step, path, m in points:
                if step < int(metrics.get("step", -1)):
                    record_point(c, job, run_id, step, path, m)
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised for Tune
        c.set_tag(run_id, "raysweep.status_reason", failure_reason(err))
        c.set_terminated(run_id, status="FAILED")
        raise
    tune.report(finish_trial(c, job, run_id, metrics, checkpoint, ctx["target_metrics"], entered))


def failure_reason(err: BaseException) -> str:
    """The ``raysweep.status_reason`` of a failed trial: the error's first line, redacted (an
    exception may quote a URI with its password, or a token), at most 500 characters."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return f"error: {tracking.redact_text(first)[:500]}"


def reporting_options(job: JobSpec, ctx: dict, run_id: str, trial_id: str, node: str):
    """What the trial's rank 0 reports besides Ray: MLflow (with the constraint, so each evaluation
    is judged as it is logged) and the console's progress board."""
    from raysweep.sweep.sinks import ReportingOptions

    return ReportingOptions(mlflow_tracking_uri=ctx["tracking_uri"], mlflow_run_id=run_id,
                            progress_board=ctx.get("progress_board"), progress_label=trial_id,
                            progress_every_seconds=ctx.get("progress_every_seconds", 10.0),
                            tags={"raysweep.worker_node": node},
                            constraint=retention_constraint(job, ctx["target_metrics"]))


def record_point(c, job: JobSpec, run_id: str, step: int, checkpoint: Optional[str], metrics: dict) -> Optional[str]:
    """An evaluation along the run (``eval/*`` at ``step``, logged by the worker): record where its
    checkpoint lives (``raysweep.checkpoint.step.<step>``), so that (trial, step) is a candidate on
    the front and can be exported. Its feasibility was logged with it (the worker's MLflow sink)."""
    if not any(k.startswith("eval/") for k in metrics):
        return None
    uri = checkpoint
    if checkpoint is not None and job.sweep.checkpoint == "artifact":
        # What export needs (weights, meta), not the optimizer state that only resuming needs.
        from raysweep.distributed.checkpoint import META, WEIGHTS

        for name in (WEIGHTS, META):
            if os.path.exists(os.path.join(checkpoint, name)):
                c.log_artifact(run_id, os.path.join(checkpoint, name), f"checkpoints/step_{step:06d}")
        uri = f"runs:/{run_id}/checkpoints/step_{step:06d}"
    if uri is not None:
        c.set_tag(run_id, checkpoint_tag(step), uri)
    return uri


FINAL_STEP_TAG = "raysweep.final_step"
TIMING_KEYS = ("step_seconds_median", "steps_timed", "unlearn_seconds")


def finish_trial(c, job: JobSpec, run_id: str, metrics: dict, checkpoint: Optional[str], target: dict,
                 entered: float) -> dict[str, Any]:
    """Log the final metrics, objectives and checkpoint to the child run; the result for Tune."""
    final = {k[len("final/"):]: v for k, v in metrics.items() if k.startswith("final/")}
    objectives = {m: final.get(m) for m in job.sweep.objectives}
    report: dict[str, Any] = {"mlflow_run_id": run_id, "trial_done": 1.0, "trial_entered_at": entered,
                              "trial_seconds": time.time() - entered}
    report.update({m: float(v) for m, v in objectives.items() if finite(v)})
    report.update({k: v for k, v in metrics.items() if k.startswith("startup/") or k == "step_seconds_median"})
    constraint = retention_constraint(job, target)
    judged = constraint.judge(final) if constraint is not None else {}
    report.update(judged)
    # The worker's MLflow sink logged final/* at the last step; the objectives and the verdict go
    # beside them, at the same step. Timings are one file, not charts.
    last_step = int(metrics.get("step", job.unlearn.steps))
    tracking.log_metrics(c, run_id, {
        **{f"objective/{m}": v for m, v in report.items() if m in objectives},
        **judged,  # a NaN margin is not logged; its feasible 0 is
    }, step=last_step)
    c.set_tag(run_id, FINAL_STEP_TAG, str(last_step))
    timings = {k: v for k, v in metrics.items() if k.startswith(("startup/", "eval_seconds/")) or k in TIMING_KEYS}
    c.log_dict(run_id, {**timings, "trial_seconds": report["trial_seconds"]}, "timings.json")
    if any(k.startswith("eval/") for k in metrics):  # the trajectory's last point
        step = int(metrics.get("step", job.unlearn.steps))
        # Inline trials recorded it when Tune took the checkpoint (TuneReporter.on_checkpoint).
        uri = c.get_run(run_id).data.tags.get(checkpoint_tag(step)) \
            or record_point(c, job, run_id, step, checkpoint, metrics)
        if uri is not None:
            c.set_tag(run_id, "raysweep.checkpoint_uri", uri)
    elif checkpoint is not None:
        uri = checkpoint
        if job.sweep.checkpoint == "artifact":
            c.log_artifacts(run_id, checkpoint, "checkpoint")
            uri = f"runs:/{run_id}/checkpoint"
        c.set_tag(run_id, "raysweep.checkpoint_uri", uri)
    _fault_pause(PAUSE_BEFORE_CLOSE)
    stopped = metrics.get("stopped")
    if stopped:
        report["stopped_reason"] = str(stopped)
        c.set_tag(run_id, "raysweep.status_reason", f"{tracking.EARLY_STOP_REASON}{stopped}")
        c.set_terminated(run_id, status="FAILED")
    else:
        c.set_terminated(run_id, status="FINISHED")
    return report


# Fault-injection hooks for the resilience and feature-matrix tests: hold a trial at one moment, or
# kill its worker at one step, so a test meets the fault exactly there however fast the machine
# trains. Off unless the variable is set.
# Seconds to hold a trial between logging its results and closing its run:
PAUSE_BEFORE_CLOSE = "RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S"
# Seconds to hold it mid-run, once its first checkpoint is persisted (inline trials; run RUNNING):
PAUSE_AFTER_FIRST_CHECKPOINT = "RAYSWEEP_FAULT_PAUSE_AFTER_FIRST_CHECKPOINT_S"
# The first trial to reach this step loses its worker (rank 1 when there are several) to a hard
# exit, once per marker file, and recovers from its last checkpoint; with KILL_EACH_TRIAL set,
# every trial does (one marker per trial):
KILL_AT_STEP, KILL_MARKER = "RAYSWEEP_FAULT_KILL_AT_STEP", "RAYSWEEP_FAULT_KILL_MARKER"
KILL_EACH_TRIAL = "RAYSWEEP_FAULT_KILL_EACH_TRIAL"
# The doomed worker waits this long after its last report before it dies, so that the driver has
# registered that report's checkpoint (Tune handles results asynchronously; Ray Train's controller
# polls its workers every 2 s): the kill falls after the checkpoint, as the tests mean it to.
KILL_DELAY = "RAYSWEEP_FAULT_KILL_DELAY_S"


def _fault_kill(options, trial_id: str) -> None:
    step = os.environ.get(KILL_AT_STEP)
    if step:
        options.fail_at_step = int(step)
        options.fail_delay_s = float(os.environ.get(KILL_DELAY, "6"))
        marker = os.environ[KILL_MARKER]
        options.fail_marker = f"{marker}-{trial_id}" if os.environ.get(KILL_EACH_TRIAL) else marker


def _fault_pause(variable: str) -> None:
    pause = os.environ.get(variable)
    if pause:
        time.sleep(float(pause))
