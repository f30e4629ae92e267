"""The sweep driver: one Ray Tune run whose trials are Ray Train runs, searched by Optuna over
several objectives, tracked in MLflow, resumable after the driver dies."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from raysweep.spec import JobSpec, JobSpecError, set_dotted
from raysweep.sweep.space import SearchSpace
from raysweep.sweep import tracking

CONSTRAINT_KEY = "retention_constraint"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_storage() -> str:
    return str((Path.cwd() / "runs").resolve())


# ---- Optuna with real constraints ------------------------------------------------------------
def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_searcher(space: SearchSpace, objectives: dict[str, str], sampler: str, seed: int, constrained: bool):
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        """Sets the trial's retention constraint (``trial.set_constraint``) before telling Optuna,
        and tells failed or early-stopped trials as FAIL/PRUNED instead of a list of Nones."""

        def on_trial_complete(self, trial_id, result=None, error=False):
            from optuna.trial import TrialState

            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            if constrained and result and _finite(result.get(CONSTRAINT_KEY)):
                ot_trial.set_constraint("retention", float(result[CONSTRAINT_KEY]))
            values = [result.get(m) for m in self.metric] if result else None
            if values is None or not all(_finite(v) for v in values):
                state = TrialState.FAIL if error else TrialState.PRUNED
                self._ot_study.tell(ot_trial, None, state=state)
                self._completed_trials.add(trial_id)
                return None
            return super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(
        space=space.define_by_run,
        metric=list(objectives),
        mode=[objectives[m] for m in objectives],
        sampler=make_sampler(sampler, seed),
    )


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


# ---- one trial (runs inside Ray Tune) --------------------------------------------------------
def constraint_value(job: JobSpec, metrics: dict, target: dict) -> Optional[float]:
    """``threshold - value``: feasible when <= 0."""
    c = job.sweep.constraint
    if c is None or not _finite(metrics.get(c.metric)):
        return None
    threshold = c.at_least if c.at_least is not None else c.at_least_fraction_of_target * target[c.metric]
    return float(threshold - metrics[c.metric])


def sweep_trial(config: dict, ctx: dict) -> None:
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysweep.distributed.ray_train import build_trainer
    from raysweep.distributed.worker import WorkerOptions

    trial_id = tune.get_context().get_trial_id()
    space = SearchSpace(ctx["space"], ctx["space_source"])
    overrides = space.overrides(config)
    raw = json.loads(ctx["job_json"])
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    job = JobSpec.model_validate(raw)
    c = tracking.client(ctx["tracking_uri"])
    done = tracking.find_child(c, ctx["parent_run_id"], ctx["experiment_id"], trial_id)
    if done is not None and done.info.status == "FINISHED":
        # Tune's experiment snapshot can lag the trial's real end (driver killed in between):
        # a restored trial that already finished replays its recorded result instead of running.
        m = done.data.metrics
        replay = {k: m[f"objective/{k}"] for k in job.sweep.objectives if f"objective/{k}" in m}
        if CONSTRAINT_KEY in m:
            replay.update({CONSTRAINT_KEY: m[CONSTRAINT_KEY], "feasible": m.get("feasible", 0.0)})
        c.set_tag(done.info.run_id, "raysweep.result_replayed", "1")
        tune.report({**replay, "mlflow_run_id": done.info.run_id, "trial_done": 1.0})
        return
    params = {k: v for k, v in config.items()}
    tags = {"raysweep.method": job.unlearn.method.name, "raysweep.forget": job.unlearn.forget.name,
            "raysweep.node": ray.get_runtime_context().get_node_id()}
    run_id = tracking.get_or_create_child(c, ctx["parent_run_id"], ctx["experiment_id"], trial_id, ctx["sweep"],
                                          params, tags)
    options = WorkerOptions(mlflow_tracking_uri=ctx["tracking_uri"],
                            mlflow_run_id=run_id, max_retain_loss=job.sweep.stop_if_retain_loss_above)
    trainer = build_trainer(job, options, name=f"{ctx['sweep']}-{trial_id}",
                            storage_path=os.path.join(ctx["storage"], "train"), callbacks=[TuneReportCallback()])
    try:
        result = trainer.fit()
        error = result.error
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised for Tune
        result, error = None, err
    if error is not None:
        c.set_tag(run_id, "raysweep.status_reason", f"error: {str(error).splitlines()[0][:500]}")
        c.set_terminated(run_id, status="FAILED")
        raise RuntimeError(f"trial {trial_id} failed: {error}")
    metrics = result.metrics or {}
    final = {k[len("final/"):]: v for k, v in metrics.items() if k.startswith("final/")}
    stopped = metrics.get("stopped")
    objectives = {m: final.get(m) for m in job.sweep.objectives}
    report: dict[str, Any] = {"mlflow_run_id": run_id, "trial_done": 1.0}
    report.update({m: float(v) for m, v in objectives.items() if _finite(v)})
    cval = constraint_value(job, final, ctx["target_metrics"])
    if cval is not None:
        report[CONSTRAINT_KEY] = cval
        report["feasible"] = float(cval <= 0)
    tracking.log_metrics(c, run_id, {**{f"final/{k}": v for k, v in final.items()},
                                     **{f"objective/{m}": v for m, v in report.items() if m in objectives},
                                     **({"feasible": report["feasible"], CONSTRAINT_KEY: cval} if cval is not None else {})})
    if result.checkpoint is not None:
        uri = result.checkpoint.path
        if job.sweep.checkpoint == "artifact":
            c.log_artifacts(run_id, result.checkpoint.path, "checkpoint")
            uri = f"runs:/{run_id}/checkpoint"
        c.set_tag(run_id, "raysweep.checkpoint_uri", uri)
    if stopped:
        report["stopped_reason"] = str(stopped)
        c.set_tag(run_id, "raysweep.status_reason", f"early stop: {stopped}")
        c.set_terminated(run_id, status="FAILED")
    else:
        c.set_terminated(run_id, status="FINISHED")
    tune.report(report)


# ---- launch / resume ---------------------------------------------------------------------------
def _ray_init(address: Optional[str], job: JobSpec) -> None:
    import ray

    # Per-step Train reports (forwarded for progress) carry no objectives; only the trial's final
    # report does. Set before Ray starts so the trial processes inherit it too.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        # Logical CPUs for every concurrent trial: its function, the train controller, its workers.
        per_trial = job.sweep.trial_cpus + job.train.workers * job.train.cpus_per_worker + 1
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(job.sweep.max_concurrent * per_trial)),
                 include_dashboard=False, configure_logging=False)


def _trainable(ctx: dict, job: JobSpec):
    from ray import tune

    return tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), {"cpu": job.sweep.trial_cpus})


def target_metrics(job: JobSpec) -> dict:
    """The target's metrics (for 'fraction of target' constraints), evaluated once and cached;
    also computes the retain-reference quantities before any trial needs them."""
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import load_job_data, prepare

    data = load_job_data(job)
    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.tokenizer)
    evaluator = Evaluator(job, data, tok, QACollator(tok, job.data.max_length), prepared.retain_reference)
    cache = prepared.target.parent / f"target_eval_{evaluator._reference_key()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    evaluator.reference()
    _log("sweep: evaluating the target once")
    metrics = evaluator(load_causal_lm(prepared.target, job.model.dtype), progress=False)
    cache.write_text(json.dumps(metrics))
    return metrics


def launch(job: JobSpec, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
           storage: Optional[str] = None, name: Optional[str] = None) -> dict:
    import yaml
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    if job.sweep is None:
        raise JobSpecError("sweep: missing (a job needs a sweep section to be launched)")
    sw = job.sweep
    space = SearchSpace.load(sw.search_space)
    tracking_uri = tracking_uri or sw.tracking_uri or default_tracking_uri()
    storage = str(Path(storage).resolve()) if storage else str(sw.storage_path or default_storage())
    name = name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target = target_metrics(job)

    c = tracking.client(tracking_uri)
    exp_id = tracking.experiment_id(c, sw.experiment or f"raysweep/{job.name}")
    parent = c.create_run(exp_id, run_name=name, tags={
        tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "parent", "raysweep.storage": os.path.join(storage, name),
        "raysweep.objectives": json.dumps(sw.objectives),
        "raysweep.reference_point": json.dumps(sw.reference_point) if sw.reference_point else "",
        "raysweep.constrained": str(sw.constraint is not None)})
    pid = parent.info.run_id
    job_json = job.model_dump_json()
    c.log_text(pid, job_json, "job.json")
    if job.source:
        c.log_artifact(pid, str(job.source))
    c.log_text(pid, yaml.safe_dump(space.raw), "search_space.yaml")
    tracking.log_metrics(c, pid, {f"target/{k}": v for k, v in target.items()})
    from mlflow.entities import Param

    c.log_batch(pid, params=[Param(k, str(v)) for k, v in {
        "sampler": sw.sampler, "num_trials": sw.num_trials, "max_concurrent": sw.max_concurrent,
        "seed": sw.seed, "workers_per_trial": job.train.workers}.items()])

    ctx = {"space": space.raw, "space_source": space.source, "job_json": job_json, "tracking_uri": tracking_uri,
           "parent_run_id": pid, "experiment_id": exp_id, "sweep": name, "storage": os.path.join(storage, name),
           "target_metrics": target}
    _ray_init(address, job)
    searcher = ConcurrencyLimiter(make_searcher(space, sw.objectives, sw.sampler, sw.seed, sw.constraint is not None),
                                  max_concurrent=sw.max_concurrent)
    tuner = tune.Tuner(
        _trainable(ctx, job),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=sw.num_trials),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    _log(f"sweep {name}: {sw.num_trials} trials, {sw.max_concurrent} at a time; tracking {tracking_uri}")
    tuner.fit()
    return finish(c, tracking_uri, name)


def resume(sweep: str, *, tracking_uri: Optional[str] = None, address: Optional[str] = None) -> dict:
    from ray import tune

    tracking_uri = tracking_uri or default_tracking_uri()
    c = tracking.client(tracking_uri)
    parent = tracking.find_parent(c, sweep, tracking_uri)
    job = JobSpec.model_validate_json(Path(c.download_artifacts(parent.info.run_id, "job.json")).read_text())
    path = parent.data.tags["raysweep.storage"]
    if not tune.Tuner.can_restore(path):
        raise tracking.TrackingError(f"sweep '{sweep}' has no restorable Tune state at {path}")
    import yaml

    space = SearchSpace(yaml.safe_load(Path(c.download_artifacts(parent.info.run_id, "search_space.yaml")).read_text()),
                        str(job.sweep.search_space))
    if parent.info.status != "RUNNING":
        c.update_run(parent.info.run_id, status="RUNNING")
    ctx = {"space": space.raw, "space_source": space.source, "job_json": job.model_dump_json(),
           "tracking_uri": tracking_uri, "parent_run_id": parent.info.run_id,
           "experiment_id": parent.info.experiment_id, "sweep": sweep, "storage": path,
           "target_metrics": target_metrics(job)}
    _ray_init(address, job)
    _log(f"sweep {sweep}: resuming from {path}")
    tuner = tune.Tuner.restore(path, trainable=_trainable(ctx, job), resume_unfinished=True, resume_errored=True)
    tuner.fit()
    return finish(c, tracking_uri, sweep)


def finish(c, tracking_uri: str, sweep: str) -> dict:
    """Close runs left RUNNING, mark the parent finished, compute and log the Pareto front."""
    from raysweep.sweep.report import pareto_report

    parent = tracking.find_parent(c, sweep, tracking_uri)
    closed = tracking.close_stale_runs(c, parent, "trial did not finish (sweep ended or was interrupted)")
    if closed:
        _log(f"sweep {sweep}: closed {closed} stale RUNNING trial run(s) as KILLED")
    c.set_terminated(parent.info.run_id, status="FINISHED")
    # The plot lives with the sweep's Tune/Train storage (and in MLflow), not in the cwd.
    storage = parent.data.tags.get("raysweep.storage")
    plot = os.path.join(storage, f"pareto_{sweep}.png") if storage and os.path.isdir(storage) else None
    return pareto_report(c, tracking_uri, sweep, log_plot=True, plot_path=plot)
