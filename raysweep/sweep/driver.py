"""The sweep driver: assembles one Ray Tune run whose trials (``sweep/trial.py``) are searched by
Optuna over several objectives (``sweep/searcher.py``), tracked in MLflow (``sweep/tracking.py``),
shown on the console (``sweep/console.py``) and resumable after the driver dies.

Why one module: ``launch`` and ``resume`` build the same Tune run (Ray start, MLflow parent run,
searcher, scheduler, console) and finish it the same way; keeping both with the helpers they share
shows that a resumed sweep is assembled exactly like a new one."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

from raysweep.spec import JobSpec, JobSpecError
from raysweep.sweep import storage_trust, tracking
from raysweep.sweep.front_marks import refresh_callback
from raysweep.sweep.grid import resolve_grid
from raysweep.sweep.searcher import make_searcher
from raysweep.sweep.space import SearchSpace
from raysweep.sweep.trial import sweep_trial
from raysweep.distributed.inline import runs_inline, trial_resources
from raysweep.reporting.progress import board_name


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_storage() -> str:
    return str((Path.cwd() / "runs").resolve())


# ---- launch / resume ---------------------------------------------------------------------------
def quiet_logging(verbose: bool) -> None:
    """Ray's, Tune's, MLflow's and alembic's chatter only with ``--verbose``; errors always."""
    import logging

    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(level)
    # mlflow configures its own logger when first imported: tell it through its variable too.
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO" if verbose else "WARNING"
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    except ImportError:
        pass
    # Ray 2.60's default output engine prints its experiment box even when silent; the legacy
    # one honours verbose=0.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"


def ray_init(address: Optional[str], job: JobSpec, verbose: bool = False) -> None:
    # Checkpoint reports of a trial carry no objectives; only its final report does. Set before
    # Ray starts so the trial processes inherit it too.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's automatic loggers include TensorBoard's, whose set-up imports torch and tensorboard
    # (~6 s of the driver's CPU before the first trial starts); results live in MLflow. The CSV
    # and JSON loggers Tune's own analysis reads are added explicitly (tune_loggers()).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    quiet_logging(verbose)
    sw, t = job.sweep, job.train
    # Logical CPUs for every concurrent trial: inline, its worker; on Ray Train, its function,
    # the train controller and its workers.
    per_trial = t.cpus_per_worker if runs_inline(job) else sw.trial_cpus + t.workers * t.cpus_per_worker + 1
    _start_ray(address, sw.max_concurrent * per_trial, verbose)


def _start_ray(address: Optional[str], cpus_needed: float, verbose: bool) -> None:
    """Connect to ``address``, or start a local Ray with at least ``cpus_needed`` logical CPUs."""
    import logging

    import ray

    inherit_trial_actor_env()
    if ray.is_initialized():
        return
    # Worker output (Ray Train's per-report dumps, controller warnings) reaches the console only
    # with --verbose; trial events and errors reach it through the sweep console either way.
    common = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
                  configure_logging=True)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)), include_dashboard=False, **common)


# Tune's runtime env for every trial actor (for PyTorch Lightning, which raysweep does not use):
# a copy of ray.tune.execution.class_cache.DEFAULT_ENV_VARS, because reading that imports Tune
# (~1.4 s) before Ray starts. Should Tune's defaults change, the variables this copy lacks simply
# stay in Tune's runtime env (trial_actors_on_prestarted_workers drops only inherited ones).
TUNE_TRIAL_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}


def inherit_trial_actor_env() -> None:
    """Before Ray starts: Tune's trial-actor variables set here, so Ray's workers inherit them
    (see :func:`trial_actors_on_prestarted_workers`)."""
    for key, value in TUNE_TRIAL_ACTOR_ENV.items():
        os.environ.setdefault(key, value)


def trial_actors_on_prestarted_workers() -> None:
    """An actor whose runtime env differs from the job's cannot take one of the idle workers Ray
    starts with itself: with Tune's ``PL_DISABLE_FORK`` runtime env the first trial waited for a
    new Python process (~2.5 s more before it ran, ``benchmarks/sweep_overhead.py``). Tune's
    defaults the workers already inherit are dropped from it; variables Tune propagates only when
    the driver has them (cloud credentials, Ray Train settings) still go the runtime-env way."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # another Ray layout: trials start in new processes, as before
        return
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if isinstance(defaults, dict):
        class_cache.DEFAULT_ENV_VARS = {k: v for k, v in defaults.items() if os.environ.get(k) != v}


def tune_loggers() -> list:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def _trainable(ctx: dict, job: JobSpec):
    from ray import tune

    trial_actors_on_prestarted_workers()
    resources = trial_resources(job) if runs_inline(job) else {"cpu": job.sweep.trial_cpus}
    return tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), resources)


def ray_init_for_run(address: Optional[str], job: JobSpec, verbose: bool = False) -> None:
    """Ray for a single ``raysweep run --ray``: room for the trial (and a Train controller)."""
    _start_ray(address, job.train.workers * job.train.cpus_per_worker + (0 if runs_inline(job) else 2), verbose)


def progress_board(sweep: str):
    import ray

    from raysweep.reporting.progress import ProgressBoard

    return ray.remote(num_cpus=0)(ProgressBoard).options(name=board_name(sweep), get_if_exists=True).remote()


def _tuner_configs(job: JobSpec, verbose: bool):
    """Tune's failure handling: inline trials are retried by Tune from their last checkpoint (the
    job's max_failures); Ray Train trials are retried by Ray Train, and Tune retries once more.
    With evaluations along the run every evaluated checkpoint is a front candidate that
    ``raysweep export`` may need: Tune keeps them all unless MLflow holds copies (``artifact``)."""
    from ray import tune

    inline = runs_inline(job)
    keep_all = bool(job.eval.every) and job.sweep.checkpoint != "artifact"
    return dict(
        failure_config=tune.FailureConfig(max_failures=job.train.max_failures if inline else 1),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if keep_all else job.train.keep_checkpoints),
        verbose=2 if verbose else 0,
    )


def _scheduling(job: JobSpec, ctx: dict, c=None, parent=None):
    """The sweep's scheduler (``sweep.scheduler``) and the callback that records the trials it
    stops; on resume its rungs are rebuilt from what MLflow recorded (``c``, ``parent``)."""
    from raysweep.sweep.schedulers import make_scheduler
    from raysweep.sweep.schedulers.record import stopped_trial_callback
    from raysweep.sweep.trial import retention_constraint

    scheduler = make_scheduler(job, retention_constraint(job, ctx["target_metrics"]))
    if scheduler is None:
        return None, []
    if c is not None:
        from raysweep.sweep.schedulers.restore import restore_rungs

        restore_rungs(scheduler.rungs, c, parent, job)
    return scheduler, [stopped_trial_callback(ctx["tracking_uri"], ctx["parent_run_id"], ctx["experiment_id"],
                                              scheduler.rungs, job)]


def target_metrics(job: JobSpec) -> dict:
    """The target's metrics (for 'fraction of target' constraints), evaluated once and cached;
    also computes the retain-reference quantities before any trial needs them."""
    from raysweep.evaluation.suite import evaluation_key
    from raysweep.models.prepare import cached_preparation, job_probe, load_job_data, prepare

    data = load_job_data(job)
    benchmarks = list(job.eval.benchmarks or [job.data.benchmark])
    cached = cached_preparation(job, data)
    if cached is not None:  # the usual case: answered without torch (nor transformers for a tiny model)
        key = evaluation_key(job, benchmarks, data, job_probe(job))
        hit = cached.target.parent / f"target_eval_{key}.json"
        if hit.exists() and (cached.retain_reference is None or not {"tofu", "muse"} & set(benchmarks)
                             or (cached.retain_reference.parent / f"reference_eval_{key}.json").exists()):
            return json.loads(hit.read_text())
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_causal_lm, load_tokenizer

    prepared = prepare(job, data)
    tok = load_tokenizer(prepared.tokenizer)
    evaluator = Evaluator(job, data, tok, QACollator.for_job(job, tok), prepared.retain_reference)
    cache = prepared.target.parent / f"target_eval_{evaluator._reference_key()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    evaluator.reference()
    _log("sweep: evaluating the target once")
    metrics = evaluator(load_causal_lm(prepared.target, job.model.dtype), progress=False)
    cache.write_text(json.dumps(metrics))
    return metrics


def launch(job: JobSpec, *, address: Optional[str] = None, tracking_uri: Optional[str] = None,
           storage: Optional[str] = None, name: Optional[str] = None, verbose: bool = False,
           callbacks: Optional[list] = None, progress_every_seconds: float = 10.0,
           summary_every_seconds: float = 30.0, warm_start: Optional[str] = None, release_ray: bool = False) -> dict:
    """``release_ray``: stop Ray once the trials are done (the CLI's one-sweep driver), while the
    front is computed and published rather than after."""
    if job.sweep is None:
        raise JobSpecError("sweep: missing (a job needs a sweep section to be launched)")
    job = resolve_grid(job)
    sw = job.sweep
    space = SearchSpace.load(sw.search_space)
    tracking_uri = tracking_uri or sw.tracking_uri or default_tracking_uri()
    storage = str(Path(storage).resolve()) if storage else str(sw.storage_path or default_storage())
    name = name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    quiet_logging(verbose)
    # Starting Ray (~5 s) waits on its own processes: open the sweep's MLflow run and import
    # Tune (~1.4 s) meanwhile. (Ray has to start on the main thread: its processes die with the
    # thread that spawned them.)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        opened = pool.submit(_open_sweep_run, job, space, tracking_uri, storage, name, warm_start)
        imported = pool.submit(_import_tune)
        ray_init(address, job, verbose)
        c, exp_id, pid, target, warm = opened.result()
        tune, ConcurrencyLimiter = imported.result()
    job_json = job.model_dump_json()
    ctx = {"space": space.raw, "space_source": space.source, "job_json": job_json, "tracking_uri": tracking_uri,
           "parent_run_id": pid, "experiment_id": exp_id, "sweep": name, "storage": os.path.join(storage, name),
           "target_metrics": target, "progress_every_seconds": progress_every_seconds}
    board = progress_board(name)
    ctx["progress_board"] = board_name(name)
    searcher = ConcurrencyLimiter(make_searcher(space, sw.objectives, sw.sampler, sw.seed, sw.constraint is not None,
                                                warm_trials=tuple(warm), grid_points=sw.grid_points), max_concurrent=sw.max_concurrent)
    console = _console(name, space, job, board, summary_every_seconds)
    scheduler, recorders = _scheduling(job, ctx)
    if scheduler is not None:
        scheduler.limiter = searcher  # promotion: pause hands paused trials' slots back to it
    tuner = tune.Tuner(
        _trainable(ctx, job),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=sw.num_trials, reuse_actors=runs_inline(job),
                                    scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=storage,
                                  callbacks=[console, *recorders, refresh_callback(tracking_uri, name), *tune_loggers(),
                                             *(callbacks or [])],
                                  **_tuner_configs(job, verbose)),
    )
    how = "inline (one worker each)" if runs_inline(job) else f"on Ray Train ({job.train.workers} workers each)"
    _log(f"sweep {name}: {sw.num_trials} trials, {sw.max_concurrent} at a time, {how}; "
         f"MLflow {tracking.redact(tracking_uri)}; storage {os.path.join(storage, name)}")
    return _fit_and_finish(tuner, board, c, tracking_uri, name, release_ray)


def _import_tune():
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    return tune, ConcurrencyLimiter


def _open_sweep_run(job: JobSpec, space: SearchSpace, tracking_uri: str, storage: str, name: str,
                    warm_start: Optional[str] = None):
    """The sweep's parent run with its job, search space, target metrics and settings; and the
    earlier sweep's trials when warm-starting (checked before anything is created)."""
    import yaml
    from mlflow.entities import Param

    sw = job.sweep
    c = tracking.client(tracking_uri)
    warm = []
    if warm_start:
        from raysweep.sweep.warm_start import earlier_trials

        warm = earlier_trials(c, tracking_uri, warm_start, space, sw.objectives)
    target = target_metrics(job)
    exp_id = tracking.experiment_id(c, sw.experiment or f"raysweep/{job.name}")
    tracking.grant_trials(tracking_uri, exp_id)  # the nodes' own MLflow user: this experiment only
    stored = tracking.redact(os.path.join(storage, name))
    parent = c.create_run(exp_id, run_name=name, tags={
        tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "parent", storage_trust.STORAGE_TAG: stored,
        storage_trust.MAC_TAG: storage_trust.sign(name, stored),
        "raysweep.objectives": json.dumps(sw.objectives),
        "raysweep.reference_point": json.dumps(sw.reference_point) if sw.reference_point else "",
        "raysweep.constrained": str(sw.constraint is not None), **tracking.objective_tags(sw.objectives),
        **({"raysweep.warm_start": f"{warm_start} ({len(warm)} trials)"} if warm_start else {})})
    pid = parent.info.run_id
    tracking.log_job(c, pid, job)
    c.log_text(pid, yaml.safe_dump(space.raw), "search_space.yaml")
    tracking.log_metrics(c, pid, {f"target/{k}": v for k, v in target.items()})
    c.log_batch(pid, params=[Param(k, str(v)) for k, v in {
        "sampler": sw.sampler, "num_trials": sw.num_trials, "max_concurrent": sw.max_concurrent,
        "seed": sw.seed, "workers_per_trial": job.train.workers}.items()])
    return c, exp_id, pid, target, warm


def _console(name: str, space: SearchSpace, job: JobSpec, board, summary_every_seconds: float):
    from raysweep.sweep.console import make_console

    sw = job.sweep
    return make_console(name, space, sw.num_trials, sw.objectives, sw.reference_point, sw.max_concurrent, board,
                        summary_every=summary_every_seconds,
                        max_failures=job.train.max_failures if runs_inline(job) else 1)


def resume(sweep: str, *, tracking_uri: Optional[str] = None, address: Optional[str] = None,
           verbose: bool = False, callbacks: Optional[list] = None, release_ray: bool = False,
           storage: Optional[str] = None) -> dict:
    """``storage``: a root the user names; the sweep's Tune state is trusted under it even when
    its MLflow tag is not signed by this user's key (see :mod:`raysweep.sweep.storage_trust`)."""
    import yaml
    from ray import tune

    quiet_logging(verbose)
    tracking_uri = tracking_uri or default_tracking_uri()
    c = tracking.client(tracking_uri)
    parent = tracking.find_parent(c, sweep, tracking_uri)
    # before anything reads the folder: Tune unpickles from it
    path = storage_trust.trusted_storage(parent.data.tags, sweep, [storage] if storage else [])
    job = JobSpec.model_validate_json(Path(c.download_artifacts(parent.info.run_id, "job.json")).read_text())
    if not tune.Tuner.can_restore(path):
        raise tracking.TrackingError(f"sweep '{sweep}' has no restorable Tune state at {path}")
    space = SearchSpace(yaml.safe_load(Path(c.download_artifacts(parent.info.run_id, "search_space.yaml")).read_text()),
                        str(job.sweep.search_space))
    if parent.info.status != "RUNNING":
        c.update_run(parent.info.run_id, status="RUNNING")
    ctx = {"space": space.raw, "space_source": space.source, "job_json": job.model_dump_json(),
           "tracking_uri": tracking_uri, "parent_run_id": parent.info.run_id,
           "experiment_id": parent.info.experiment_id, "sweep": sweep, "storage": path,
           "target_metrics": target_metrics(job), "progress_board": board_name(sweep)}
    ray_init(address, job, verbose)
    board = progress_board(sweep)
    _log(f"sweep {sweep}: resuming from {path}")
    tuner = tune.Tuner.restore(path, trainable=_trainable(ctx, job), resume_unfinished=True, resume_errored=True)
    # The restored RunConfig carries the pickled console of the first driver: give it a fresh one
    # (Ray 2.60 has no public way to replace callbacks on restore).
    run_config = tuner._local_tuner.get_run_config()
    scheduler, recorders = _scheduling(job, ctx, c, parent)
    run_config.callbacks = [_console(sweep, space, job, board, 30.0), *recorders, refresh_callback(tracking_uri, sweep),
                            *tune_loggers(),
                            *(callbacks or [])]
    if scheduler is not None:  # likewise the scheduler: a fresh one, its rungs rebuilt from MLflow
        tuner._local_tuner._tune_config.scheduler = scheduler
    return _fit_and_finish(tuner, board, c, tracking_uri, sweep, release_ray)


def _fit_and_finish(tuner, board, c, tracking_uri: str, sweep: str, release_ray: bool) -> dict:
    prepare_finish_in_background()
    try:
        tuner.fit()
    finally:
        _stop_board(board)
    return _finish(c, tracking_uri, sweep, release_ray)


def _stop_board(board) -> None:
    """The progress board is a named actor: on a long-lived cluster it would outlive the sweep."""
    import ray

    try:
        ray.kill(board)
    except Exception:  # noqa: BLE001 - already gone with its node
        pass


def prepare_finish_in_background() -> None:
    """The end of a sweep imports matplotlib (the plots) and has MLflow map every installed
    package to its modules (``save_model`` of each front model checks its requirements): about a
    second each, several on a busy machine. The driver mostly waits on its trials: do both then."""
    import threading

    def work() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
            from mlflow.utils.requirements_utils import _init_modules_to_packages_map

            _init_modules_to_packages_map()
        except Exception:  # noqa: BLE001 - only a head start: finish() does the same if needed
            pass

    threading.Thread(target=work, name="raysweep-prepare-finish", daemon=True).start()


def _finish(c, tracking_uri: str, sweep: str, release_ray: bool) -> dict:
    if not release_ray:
        return finish(c, tracking_uri, sweep)
    from concurrent.futures import ThreadPoolExecutor

    import ray

    # Stopping Ray's processes takes ~1.5 s and finish() needs only MLflow: overlap them. Ray is
    # stopped from the main thread, as it was started.
    with ThreadPoolExecutor(1) as pool:
        front = pool.submit(finish, c, tracking_uri, sweep)
        ray.shutdown()
        return front.result()


def finish(c, tracking_uri: str, sweep: str) -> dict:
    """Close runs left RUNNING, mark the parent finished, compute and log the Pareto front."""
    from raysweep.sweep.report import pareto_report

    parent = tracking.find_parent(c, sweep, tracking_uri)
    closed = tracking.close_stale_runs(c, parent, "trial did not finish (sweep ended or was interrupted)")
    if closed:
        _log(f"sweep {sweep}: closed {closed} stale RUNNING trial run(s) as KILLED")
    c.set_terminated(parent.info.run_id, status="FINISHED")
    # The plot lives with the sweep's Tune/Train storage (and in MLflow), not in the cwd.
    storage = storage_trust.signed_storage(parent.data.tags, sweep)  # a forged tag gets no file written
    plot = os.path.join(storage, f"pareto_{sweep}.png") if storage and os.path.isdir(storage) else None
    report = pareto_report(c, tracking_uri, sweep, log_plot=True, plot_path=plot)
    from raysweep.sweep.front_marks import publish

    publish(c, report)  # the front where MLflow users look: run marks, parent files, logged models
    return report
