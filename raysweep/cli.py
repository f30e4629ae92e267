"""The ``raysweep`` command line.

Why one module: it is the argument parser plus one short ``cmd_*`` function per command, each
only wiring the layers below (pre-flight, sweep, report); its length is the number of commands,
and a reader finds every command's options next to what the command does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(_k, _v)


def _parse_overrides(items: list[str]) -> dict:
    from raysweep.validation import parse_overrides

    return parse_overrides(items)


def cmd_prepare(args) -> int:
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    from raysweep.preflight import check_job

    job = load_job(args.job, _parse_overrides(args.set))
    check_job(job)
    p = prepare(job, force=args.force)
    print(json.dumps({"target": str(p.target), "retain_reference": str(p.retain_reference),
                      "key": p.key, "reused": p.reused}, indent=2))
    return 0


def cmd_run(args) -> int:
    from raysweep import preflight
    from raysweep.spec import load_job

    job = load_job(args.job, _parse_overrides(args.set))
    on_ray = args.ray or job.train.workers > 1 or job.train.use_gpu
    preflight.check_output_file(args.out, "--out")
    if on_ray:
        preflight.check_writable_dir(args.storage or job.cache_dir / "ray_results", "--storage")
    data = preflight.check_job(job, address=args.address)
    if args.dry_run:
        print(preflight.run_plan(job, data, on_ray))
        return 0
    from raysweep.distributed.single import format_table, run_trial

    u = job.unlearn
    print(f"raysweep run: {job.name}: forget={u.forget.name} retain={','.join(r.name for r in u.retain)} "
          f"method={u.method.name} steps={u.steps} lr={u.lr}", file=sys.stderr)
    if on_ray:
        result = _run_on_ray_train(job, args)
    else:
        result = run_trial(job, progress=not args.quiet)
    print(format_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def _metric_table(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics) if metrics else 6
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k.ljust(width)}  {v:.4g}" for k, v in metrics.items()]
    return "\n".join(lines)


def cmd_eval(args) -> int:
    import time

    from raysweep import preflight
    from raysweep.spec import load_job, parse_job
    from raysweep.validation import InputError

    preflight.check_model_dir(args.model, "model")
    preflight.check_output_file(args.out, "--out")
    if args.reference:
        preflight.check_model_dir(args.reference, "--reference")
    if not args.job and not Path(args.data).is_dir():
        raise InputError(f"--data: '{args.data}' is not allowed (not a folder; the data root with "
                                    "tofu/, muse_news/, wmdp/, mmlu/)")

    benchmarks = []
    for b in args.benchmark:
        benchmarks += ["wmdp_bio", "wmdp_cyber"] if b == "wmdp" else [b]
    overrides = _parse_overrides(args.set)
    if args.job:
        job = load_job(args.job, overrides)
    else:
        from raysweep.spec import set_dotted

        root = Path(args.data)
        bench = "muse" if "muse" in benchmarks else "tofu"
        # The model evaluated is the job's model, so that --set model.template=... is checked against it.
        raw = {"data": {"benchmark": bench, "path": str(root / ("muse_news" if bench == "muse" else "tofu"))},
               "model": {"base": str(args.model)},
               "unlearn": {"forget": {"name": "ga"}, "retain": {"name": "nll"}},
               "eval": {"mcq_data": str(root), **({"benchmarks": ["lm_eval"]} if "lm_eval" in benchmarks else {})}}
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value)
        job = parse_job(raw)
    preflight.check_lm_eval(job)
    data = preflight.check_data(job)
    from raysweep.data.collate import QACollator
    from raysweep.evaluation.suite import Evaluator
    from raysweep.models.build import load_causal_lm, load_tokenizer
    from raysweep.models.prepare import cached_preparation

    reference = Path(args.reference) if args.reference else None
    if reference is None and args.job and job.prepare.retain_reference and {"tofu", "muse"} & set(benchmarks):
        # Only a prepared reference from the cache: evaluation never trains one.
        prepared = cached_preparation(job, data)
        if prepared is None or prepared.retain_reference is None:
            raise InputError("--reference: missing (the job's retain reference is not prepared in "
                             f"'{job.cache_dir}' and eval never trains; allowed: --reference DIR, or run "
                             "`raysweep prepare` on the job first)")
        reference = prepared.retain_reference
    tok = load_tokenizer(args.model)
    model = load_causal_lm(args.model, job.model.dtype)
    evaluator = Evaluator(job, data, tok, QACollator.for_job(job, tok), reference, benchmarks)
    t0 = time.time()
    metrics = evaluator(model, progress=True)
    print(_metric_table(metrics))
    out = Path(args.out) if args.out else Path(args.model) / f"eval_{'_'.join(benchmarks)}.json"
    fmt, e = evaluator.collator.prompt, job.eval
    settings = {"template": fmt.name, "system_prompt": fmt.system_prompt, "reference": str(reference or ""),
                "max_questions": e.max_questions, "max_length": e.max_length, "max_new_tokens": e.max_new_tokens}
    out.write_text(json.dumps({"model": str(args.model), "benchmarks": benchmarks, "metrics": metrics,
                               "settings": settings, "seconds": time.time() - t0}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_on_ray_train(job, args) -> dict:
    """One trial on Ray: inline in a one-trial Tune run for one worker (the sweep's own trial
    path), a Ray Train ``TorchTrainer`` (DDP workers) for several. Checkpoints and restarts on
    failure either way; the before/after evaluations run on the workers, split across them."""
    import time

    from raysweep.distributed.inline import runs_inline
    from raysweep.distributed.worker import WorkerOptions
    from raysweep.distributed.single import split_result
    from raysweep.sweep.driver import quiet_logging, ray_init_for_run

    quiet_logging(args.verbose)
    storage = str(Path(args.storage).resolve()) if args.storage else str((job.cache_dir / "ray_results").resolve())
    name = f"{job.name}-{int(time.time())}"
    options = WorkerOptions(evaluate_before=True)
    if runs_inline(job):
        out, checkpoint = _run_inline_on_tune(job, options, args, storage, name)
    else:
        from raysweep.distributed.ray_train import build_trainer
        from raysweep.models.prepare import prepare

        prepare(job)  # once on the driver, before any worker looks for the cached models
        ray_init_for_run(args.address, job, args.verbose)
        result = build_trainer(job, options, name=name, storage_path=storage).fit()
        if result.error is not None:
            raise RuntimeError(f"ray train run failed: {result.error}")
        out, checkpoint = result.metrics, (result.checkpoint.path if result.checkpoint else None)
    print(f"checkpoint: {checkpoint}", file=sys.stderr)
    return {**split_result(out), "history": [], "checkpoint": checkpoint,
            "step_seconds_median": out.get("step_seconds_median"), "seconds_unlearn": out.get("unlearn_seconds"),
            "startup": {k.split("/", 1)[1]: v for k, v in out.items() if k.startswith("startup/")}}


def _run_inline_on_tune(job, options, args, storage: str, name: str):
    from ray import tune

    from raysweep.distributed.inline import trial_resources
    from raysweep.sweep.sinks import ReportingOptions
    from raysweep.reporting.progress import board_name
    from raysweep.sweep.driver import progress_board, ray_init_for_run, trial_actors_on_prestarted_workers
    from raysweep.sweep.console import make_console
    from raysweep.sweep.space import SearchSpace

    ray_init_for_run(args.address, job, args.verbose)
    trial_actors_on_prestarted_workers()
    board = progress_board(name)
    options.reporting = ReportingOptions(progress_board=board_name(name), progress_every_seconds=5.0)
    console = make_console(name, SearchSpace({}), 1, {}, board=board, summary_every=1e9)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_inline_run_trial, job_json=job.model_dump_json(),
                                                 options=options.to_dict()), trial_resources(job)),
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=2 if args.verbose else 0,
                                  callbacks=[console],
                                  failure_config=tune.FailureConfig(max_failures=job.train.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=job.train.keep_checkpoints)))
    result = tuner.fit()[0]
    if result.error is not None:
        raise RuntimeError(f"ray run failed: {str(result.error).splitlines()[0]}")
    return result.metrics, (result.checkpoint.path if result.checkpoint else None)


def _inline_run_trial(config, job_json: str, options: dict) -> None:
    from ray import tune

    from raysweep.distributed.inline import run_inline
    from raysweep.distributed.worker import WorkerOptions
    from raysweep.spec import JobSpec

    opts = WorkerOptions.from_dict(options)
    opts.reporting.progress_label = tune.get_context().get_trial_id()
    run_inline(JobSpec.model_validate_json(job_json), opts)


def cmd_launch(args) -> int:
    from raysweep import preflight
    from raysweep.spec import JobSpecError, load_job
    from raysweep.sweep.driver import default_storage, default_tracking_uri
    from raysweep.sweep.grid import resolve_grid
    from raysweep.sweep.space import SearchSpace

    job = load_job(args.job, _parse_overrides(args.set))
    if job.sweep is None:
        raise JobSpecError("sweep: missing is not allowed (a job needs a sweep section to be launched)")
    job = resolve_grid(job)  # first: a grid that does not fit its search space is the job's own error
    sw = job.sweep
    tracking_uri = args.tracking_uri or sw.tracking_uri or default_tracking_uri()
    storage = args.storage or str(sw.storage_path or default_storage())
    preflight.check_tracking(tracking_uri, must_exist=False,  # remote first: seconds, not a run
                              field="--tracking-uri" if args.tracking_uri or not sw.tracking_uri else "sweep.tracking_uri")
    preflight.check_writable_dir(storage, "--storage")
    data = preflight.check_job(job, address=args.address)
    space = SearchSpace.load(sw.search_space)
    preflight.check_space(space, job)
    if args.warm_start:  # an earlier sweep that does not fit is a one-line error before Ray starts
        from raysweep.sweep import tracking
        from raysweep.sweep.warm_start import earlier_trials

        earlier_trials(tracking.client(tracking_uri), tracking_uri, args.warm_start, space, sw.objectives)
    if args.dry_run:
        print(preflight.launch_plan(job, data, space, tracking_uri, storage, args.address))
        return 0
    from raysweep.sweep.driver import launch
    from raysweep.sweep.report import format_report

    report = launch(job, address=args.address, tracking_uri=args.tracking_uri, storage=args.storage, name=args.name,
                    verbose=args.verbose, warm_start=args.warm_start, release_ray=_owns_process(args))
    print(format_report(report))
    print(_where_to_look(report))
    return 0


def cmd_resume(args) -> int:
    from raysweep.sweep import tracking
    from raysweep.sweep.driver import default_tracking_uri
    from raysweep.preflight import check_tracking

    check_tracking(args.tracking_uri or default_tracking_uri(), must_exist=True)
    tracking.fail_fast_http()  # the driver's own lookups; trials keep MLflow's retries
    from raysweep.sweep.driver import resume
    from raysweep.sweep.report import format_report

    report = resume(args.sweep, tracking_uri=args.tracking_uri, address=args.address, verbose=args.verbose,
                    release_ray=_owns_process(args), storage=args.storage)
    print(format_report(report))
    print(_where_to_look(report))
    return 0


def _tracking_client(args):
    from raysweep.sweep import tracking
    from raysweep.sweep.driver import default_tracking_uri

    from raysweep.preflight import check_tracking

    tracking.fail_fast_http()
    uri = args.tracking_uri or default_tracking_uri()
    check_tracking(uri, must_exist=True)
    return tracking.client(uri), uri


def cmd_pareto(args) -> int:
    from raysweep.sweep.report import format_report, pareto_report
    from raysweep.preflight import check_output_file

    check_output_file(args.plot, "--plot")
    c, uri = _tracking_client(args)
    report = pareto_report(c, uri, args.sweep, log_plot=not args.no_log, plot_path=args.plot)
    if not args.no_log:
        from raysweep.sweep.front_marks import publish

        publish(c, report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report, per_trial=args.per_trial))
        print(_front_link_line(report, uri))
    return 0


def _where_to_look(report: dict) -> str:
    """The last lines of a launch or resume: the front's MLflow view and the report command."""
    uri = report["tracking_uri"].replace("***@", "")  # redacted: the user's own credentials apply
    return f"{_front_link_line(report, uri)}\nreport: raysweep report {report['sweep']} --tracking-uri {uri}"


def _front_link_line(report: dict, uri: str) -> str:
    """Where the front is in MLflow's UI (the model-training view, the front's saved view)."""
    from raysweep.sweep.front_marks import front_filter, front_runs_link
    from raysweep.sweep.tracking import redact

    if uri.startswith(("http://", "https://")):
        base = redact(uri.rstrip("/")).replace("***@", "") + "/"
        return f"front in MLflow: {front_runs_link(report['experiment_id'], report['sweep'], base)}"
    return (f"front in MLflow: `mlflow ui --backend-store-uri {uri}`, then open "
            f"{front_runs_link(report['experiment_id'], report['sweep'], 'http://127.0.0.1:5000/')} "
            f"(or filter the runs with {front_filter(report['sweep'])})")


def cmd_report(args) -> int:
    from raysweep.report.html import write_report
    from raysweep.sweep.importance import log_importance, param_importances, search_space
    from raysweep.sweep.report import pareto_report
    from raysweep.preflight import check_output_dir

    check_output_dir(args.out, "--out")
    c, uri = _tracking_client(args)
    report = pareto_report(c, uri, args.sweep)
    report["importance"] = param_importances(report["trials"], report["objectives"],
                                             search_space(c, report["parent_run_id"]))
    if not args.no_log:
        log_importance(c, report["parent_run_id"], report["importance"])
    # Links into the MLflow UI only when it is a server a browser can open.
    base = uri.rstrip("/") + "/" if uri.startswith(("http://", "https://")) else None
    from raysweep.sweep.tracking import redact

    files = write_report(report, args.out or f"report_{args.sweep}", link_base=base and redact(base).replace("***@", ""))
    print(f"report of sweep {args.sweep}: {files['html'].resolve()} (and {files['markdown'].name}); "
          f"front {len(report['front'])} of {report['n_points']} points, hypervolume {report['hypervolume']:.6g}")
    return 0


def cmd_export(args) -> int:
    from raysweep.sweep.export import export, parse_point
    from raysweep.preflight import check_export_dir

    check_export_dir(args.out_dir, args.force)
    parse_point(args.point)
    c, uri = _tracking_client(args)
    out = export(c, uri, args.sweep, args.point, args.out_dir)
    print(f"exported {args.point} of sweep {args.sweep} to {out} (load with from_pretrained)")
    return 0


def cmd_densify(args) -> int:
    from raysweep.sweep.densify import densify, format_summary, parse_count, parse_lambdas
    from raysweep.sweep.export import parse_point
    from raysweep.validation import InputError

    lambdas, k = parse_lambdas(args.lambdas), parse_count(args.points)
    if k is not None and args.point:
        raise InputError("--points: not allowed with --point (either the K best front points or named points)")
    for p in args.point or []:
        parse_point(p)
    c, uri = _tracking_client(args)
    summary = densify(c, uri, args.sweep, lambdas, named=args.point, k=k, neighbours=args.neighbours)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def cmd_status(args) -> int:
    from raysweep.sweep.report import status_report

    c, uri = _tracking_client(args)
    print(status_report(c, uri, args.sweep))
    return 0


def _job_arguments(parser) -> None:
    parser.add_argument("job")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a job field")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raysweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="fine-tune and cache the target and the retain reference")
    _job_arguments(p)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(func=cmd_prepare)

    r = sub.add_parser("run", help="run one unlearning trial on this process and print a table")
    _job_arguments(r)
    r.add_argument("--out", help="write the result (before/after metrics, per-step history) as JSON")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--ray", action="store_true", help="run as a Ray Train job (implied by train.workers > 1)")
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    r.add_argument("--storage", help="Ray storage path for checkpoints (default: <cache_dir>/ray_results)")
    r.add_argument("--verbose", action="store_true", help="show Ray's own output (worker logs, reports)")
    r.add_argument("--dry-run", action="store_true", help="validate the job, data and model, print the plan, start nothing")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a model directory on a benchmark; writes JSON, prints a table")
    e.add_argument("model", help="a model directory (save_pretrained layout)")
    e.add_argument("--benchmark", action="append", required=True,
                   choices=["qa", "tofu", "muse", "wmdp", "wmdp_bio", "wmdp_cyber", "wmdp_chem", "mmlu", "lm_eval"],
                   help="lm_eval: the tasks of eval.lm_eval (--set 'eval.lm_eval={tasks: [raysweep_mmlu]}')")
    e.add_argument("--job", help="take data, subset and eval settings (and the prepared retain reference, "
                   "never trained here) from a job")
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a job field (of --job, else of the built-in evaluation job)")
    e.add_argument("--data", default=os.environ.get("RAYSWEEP_DATA", "../shared/data"),
                   help="data root with tofu/, muse_news/, wmdp/, mmlu/ (without --job)")
    e.add_argument("--reference", help="retain reference model directory (TOFU forget quality, MUSE privleak)")
    e.add_argument("--out", help="JSON output path (default: MODEL/eval_<benchmarks>.json)")
    e.set_defaults(func=cmd_eval)

    la = sub.add_parser("launch", help="run a sweep (Ray Tune + Optuna, trials on Ray Train, MLflow tracking)")
    _job_arguments(la)
    la.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    la.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    la.add_argument("--storage", help="Tune/Train storage path (default: <cwd>/runs)")
    la.add_argument("--name", help="sweep name (default: <job name>-<timestamp>)")
    la.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output (worker logs, reports)")
    la.add_argument("--warm-start", metavar="SWEEP",
                    help="seed the search with the finished trials of an earlier sweep in the same MLflow")
    la.add_argument("--dry-run", action="store_true",
                    help="validate everything, contact the tracking server, print the plan, start nothing")
    la.set_defaults(func=cmd_launch)

    re_ = sub.add_parser("resume", help="resume a sweep whose driver died (Tuner.restore)")
    re_.add_argument("sweep")
    re_.add_argument("--tracking-uri")
    re_.add_argument("--address")
    re_.add_argument("--storage", help="the storage root the sweep was launched with: its Tune state is trusted "
                                       "under it (else only when its MLflow tag carries this user's signature)")
    re_.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output")
    re_.set_defaults(func=cmd_resume)

    pa = sub.add_parser("pareto", help="the Pareto front of a sweep, from MLflow alone")
    pa.add_argument("sweep")
    pa.add_argument("--tracking-uri")
    pa.add_argument("--json", action="store_true", help="machine-readable output")
    pa.add_argument("--plot", help="where to write the plot (default: pareto_<sweep>.png)")
    pa.add_argument("--no-log", action="store_true",
                    help="do not log to MLflow (front marks on the runs, files on the parent run, logged models)")
    pa.add_argument("--per-trial", action="store_true",
                    help="each trial's own best trade-offs over its evaluated steps (eval.every)")
    pa.set_defaults(func=cmd_pareto)

    ex = sub.add_parser("export", help="write a trial's checkpoint as a Hugging Face model directory")
    ex.add_argument("sweep")
    ex.add_argument("point", metavar="TRIAL[@STEP]", help="a trial id, optionally at an evaluated step")
    ex.add_argument("out_dir", help="a new or empty folder (the model's files are written into it)")
    ex.add_argument("--force", action="store_true",
                    help="write into a folder that holds files: only files an earlier export wrote are replaced")
    ex.add_argument("--tracking-uri")
    ex.set_defaults(func=cmd_export)

    dn = sub.add_parser("densify", help="evaluate weight interpolations between the target and front points "
                        "(no training) and log them as points of the sweep")
    dn.add_argument("sweep")
    dn.add_argument("--points", metavar="K", help="the K front points with the largest hypervolume contribution "
                    "(default: every front point)")
    dn.add_argument("--point", action="append", metavar="TRIAL[@STEP]", help="interpolate towards this point "
                    "(repeatable; instead of --points)")
    dn.add_argument("--lambdas", nargs="+", metavar="L", help="where on each segment, strictly between 0 (the target) "
                    "and 1 (the point) (default: 0.25 0.5 0.75)")
    dn.add_argument("--neighbours", action="store_true",
                    help="also between neighbouring front points that share the target (not LoRA points)")
    dn.add_argument("--json", action="store_true", help="machine-readable output")
    dn.add_argument("--tracking-uri")
    dn.set_defaults(func=cmd_densify)

    rp = sub.add_parser("report", help="a self-contained HTML page (and Markdown) of a sweep's front, from MLflow alone")
    rp.add_argument("sweep")
    rp.add_argument("--out", help="folder to write report.html, report.md and the SVGs to (default: report_<sweep>)")
    rp.add_argument("--tracking-uri")
    rp.add_argument("--no-log", action="store_true",
                    help="do not log the hyperparameter importance (importance.json) to the sweep's parent run")
    rp.set_defaults(func=cmd_report)

    st = sub.add_parser("status", help="trials of a sweep and their states")
    st.add_argument("sweep")
    st.add_argument("--tracking-uri")
    st.set_defaults(func=cmd_status)

    args = parser.parse_args(argv)
    from raysweep.data.tofu import DataError
    from raysweep.registry import UnknownNameError
    from raysweep.spec import JobSpecError
    from raysweep.sweep.space import SearchSpaceError
    from raysweep.sweep.tracking import TrackingError, redact_text
    from raysweep.validation import InputError

    args._owns_process = argv is None  # the console script, not a caller of main() in-process
    try:
        rc = args.func(args)
    except (JobSpecError, DataError, UnknownNameError, FileNotFoundError, SearchSpaceError, TrackingError,
            InputError) as err:
        print(f"raysweep: error: {redact_text(' '.join(str(err).split()))}", file=sys.stderr)
        return 2
    if argv is None and args.command in ("launch", "resume"):
        _exit_now(rc)
    return rc


def _owns_process(args) -> bool:
    """The command line's driver ends with its sweep: Ray may stop as soon as the trials are done."""
    return bool(getattr(args, "_owns_process", False))


def _exit_now(rc: int) -> None:
    """End a finished sweep's driver without the interpreter's ~2 s teardown (Ray, Tune, torch,
    MLflow modules): everything is flushed and every run closed, and Ray's own processes are
    stopped here first, so nothing is left behind."""
    import logging

    import ray

    ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
