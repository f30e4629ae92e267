"""Feasibility is judged once, when a point is evaluated, and unknown is never feasible (issue 21,
item 7). With a constraint (``sweep.constraint``) a point that recorded no feasibility - its
constraint metric was NaN or missing, or Ray Train's fit() never returned because MO-ASHA stopped
the trial - is infeasible, in the report and in MO-ASHA's rungs rebuilt on resume alike; without a
constraint every point is feasible. Real sqlite MLflow through raysweep's own tracking calls."""

import json
import math
import pickle
from types import SimpleNamespace

import pytest
import yaml

from raysweep.sweep import tracking
from raysweep.sweep.report import pareto_report

from .made_sweep import OBJECTIVES, make_sweep

BEST = (0.01, 0.99)  # better than every made point on both objectives


def _unjudged_trials(c, parent):
    """t8: a MO-ASHA-stopped multi-worker trial (eval/* along the run, no eval/feasible, no final);
    t9: a finished trial whose constraint metric was NaN (objectives, no ``feasible``)."""
    pid, exp = parent.info.run_id, parent.info.experiment_id
    t8 = tracking.get_or_create_child(c, pid, exp, "t8", "made", {"method": "sago"}, {"raysweep.method": "sago"})
    for step in (2, 4):
        tracking.log_metrics(c, t8, {"eval/forget_rougeL_recall": BEST[0], "eval/retain_rougeL_recall": BEST[1]},
                             step=step)
    c.set_tag(t8, "raysweep.stopped_by", "mo_asha")
    c.set_terminated(t8, "FINISHED")
    t9 = tracking.get_or_create_child(c, pid, exp, "t9", "made", {"method": "ngdiff", "forget": "ga", "unlearn.lr": 1e-3},
                                      {"raysweep.method": "ngdiff"})
    tracking.log_metrics(c, t9, {"objective/forget_rougeL_recall": BEST[0], "objective/retain_rougeL_recall": BEST[1]})
    c.set_terminated(t9, "FINISHED")


def test_unknown_feasibility_is_infeasible_with_a_constraint_and_feasible_without(tmp_path, tofu_dir):
    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    _unjudged_trials(c, parent)
    report = pareto_report(c, uri, "made")
    unjudged = [r for r in report["trials"] if r["trial_id"] in ("t8", "t9")]
    assert [r["feasible"] for r in unjudged] == [False, False, False]
    assert {r["trial_id"] for r in report["front"]} == {"t1", "t2", "t4"}

    c.set_tag(parent.info.run_id, "raysweep.constrained", "False")  # no constraint: every point is feasible
    report = pareto_report(c, uri, "made")
    assert all(r["feasible"] for r in report["trials"])
    assert {(r["trial_id"], r["step"]) for r in report["front"]} == {("t8", 2), ("t8", 4), ("t9", None)}


def _sweep_job(tmp_path, tofu_dir, constraint=True, cache=None, **unlearn):
    from raysweep.spec import JobSpec

    from ..conftest import tiny_job

    raw = yaml.safe_load(tiny_job(tmp_path, tofu_dir, cache, **unlearn).read_text())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}}}))
    raw["eval"]["every"] = 2
    raw["sweep"] = {"search_space": str(tmp_path / "space.yaml"), "objectives": OBJECTIVES,
                    "scheduler": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2}}
    if constraint:
        raw["sweep"]["constraint"] = {"metric": "model_utility", "at_least": 0.5}
    return JobSpec.model_validate(raw)


# trial -> the eval/* report at step 2 (the first rung); the constraint: model_utility >= 0.5.
# "nan": the constraint metric is NaN, "missing": not reported; neither may count as feasible.
POINT = {"eval/forget_rougeL_recall": 0.4, "eval/retain_rougeL_recall": 0.6}
REPORTS = {"ok": {**POINT, "eval/model_utility": 0.6}, "below": {**POINT, "eval/model_utility": 0.3},
           "nan": {**POINT, "eval/model_utility": float("nan")}, "missing": POINT}


def _scheduler(job, c=None, parent=None):
    """The sweep's MO-ASHA scheduler as the driver builds it: fresh, or rebuilt from MLflow on resume."""
    from raysweep.sweep.driver import _scheduling

    ctx = {"target_metrics": {}, "tracking_uri": "unused", "parent_run_id": "p", "experiment_id": "e"}
    return _scheduling(job, ctx, c, parent)[0]


def _live_feasibility(job, reports):
    """What the live scheduler recorded at the first rung for each trial."""
    scheduler = _scheduler(job)
    for trial, metrics in reports.items():
        scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial), {"step": 2, **metrics})
    return {e.trial: e.feasible for e in scheduler.rungs.rungs[2]}


def _restored_feasibility(c, parent, job):
    return {e.trial: e.feasible for e in _scheduler(job, c, parent).rungs.rungs[2]}


def _parent(c, tmp_path, constrained: bool):
    exp = c.create_experiment("raysweep/feasible", artifact_location=(tmp_path / "artifacts").as_uri())
    return c.create_run(exp, run_name="feasible", tags={
        tracking.SWEEP_TAG: "feasible", tracking.ROLE_TAG: "parent", "raysweep.objectives": json.dumps(OBJECTIVES),
        "raysweep.constrained": str(constrained)})


def test_rungs_rebuilt_from_unjudged_points_agree_with_the_live_scheduler(tmp_path, tofu_dir):
    """Points that recorded no eval/feasible (what a stopped Ray Train trial left before the sink
    judged each evaluation): on resume they rank as the live scheduler ranked them, infeasible."""
    job = _sweep_job(tmp_path, tofu_dir)
    c = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(c, tmp_path, True)
    unjudged = {t: REPORTS[t] for t in ("below", "nan", "missing")}
    for trial, metrics in unjudged.items():
        run = tracking.get_or_create_child(c, parent.info.run_id, parent.info.experiment_id, trial, "feasible", {}, {})
        tracking.log_metrics(c, run, metrics, step=2)
    live = _live_feasibility(job, unjudged)
    assert live == {"below": False, "nan": False, "missing": False}
    assert _restored_feasibility(c, c.get_run(parent.info.run_id), job) == live


def test_the_workers_mlflow_sink_judges_every_evaluation_as_the_scheduler_does(tmp_path, tofu_dir):
    """The sweep trial's reporting options carry the constraint through Ray Train's config (a pickle
    round trip) to rank 0's MLflow sink, which logs eval/feasible and the margin with each eval/*
    report, whether or not fit() ever returns; NaN or missing -> eval/feasible 0. On resume the
    rungs rebuilt from those records equal the live ones."""
    from raysweep.distributed.worker import WorkerOptions
    from raysweep.reporting import build_reporter
    from raysweep.sweep.trial import reporting_options

    job = _sweep_job(tmp_path, tofu_dir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    parent = _parent(c, tmp_path, True)
    ctx = {"tracking_uri": uri, "target_metrics": {}}
    for trial, metrics in REPORTS.items():
        run = tracking.get_or_create_child(c, parent.info.run_id, parent.info.experiment_id, trial, "feasible", {}, {})
        options = WorkerOptions(reporting=reporting_options(job, ctx, run, trial, "node"))
        # as Ray Train's train_loop_config carries it: pickled, then rebuilt in the worker
        options = WorkerOptions.from_dict(pickle.loads(pickle.dumps(options.to_dict())))
        assert build_reporter(options.reporting, rank=1).reporters == []  # rank 0 alone logs
        reporter = build_reporter(options.reporting, rank=0)
        reporter.report({"step": 2.0, "loss_forget": 1.0, **metrics}, None)
        reporter.close()
    logged = {}
    for r in tracking.child_runs(c, c.get_run(parent.info.run_id)):
        m = r.data.metrics
        logged[r.data.tags[tracking.TRIAL_TAG]] = (m.get("eval/feasible"), m.get("eval/retention_constraint"))
    assert logged["ok"] == (1.0, pytest.approx(0.5 - 0.6))
    assert logged["below"] == (0.0, pytest.approx(0.5 - 0.3))
    assert logged["nan"] == (0.0, None) and logged["missing"] == (0.0, None)  # a NaN margin is not a metric
    live = _live_feasibility(job, REPORTS)
    assert live == {"ok": True, "below": False, "nan": False, "missing": False}
    assert _restored_feasibility(c, c.get_run(parent.info.run_id), job) == live


def test_without_a_constraint_the_sink_logs_no_feasibility_and_every_point_is_feasible(tmp_path, tofu_dir):
    from raysweep.sweep.trial import reporting_options

    job = _sweep_job(tmp_path, tofu_dir, constraint=False)
    assert reporting_options(job, {"tracking_uri": "x", "target_metrics": {}}, "r", "t", "n").constraint is None
    c = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = _parent(c, tmp_path, False)
    run = tracking.get_or_create_child(c, parent.info.run_id, parent.info.experiment_id, "below", "feasible", {}, {})
    tracking.log_metrics(c, run, REPORTS["below"], step=2)
    assert _restored_feasibility(c, c.get_run(parent.info.run_id), job) == {"below": True}


def test_optuna_is_told_an_unknown_constraint_is_violated():
    """A trial whose constraint margin is NaN or missing must not reach Optuna unconstrained (its
    samplers count a trial without constraint values as feasible): it is told +inf, violated."""
    from raysweep.reporting.constraint import CONSTRAINT_KEY
    from raysweep.sweep.searcher import make_searcher
    from raysweep.sweep.space import SearchSpace

    space = SearchSpace({"unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "s.yaml")
    space.validate()
    searcher = make_searcher(space, OBJECTIVES, "tpe", 0, True)
    for trial, margin in (("ok", -0.1), ("nan", float("nan")), ("missing", None)):
        searcher.suggest(trial)
        result = {"forget_rougeL_recall": 0.2, "retain_rougeL_recall": 0.6, "feasible": float(trial == "ok")}
        searcher.on_trial_complete(trial, {**result, **({CONSTRAINT_KEY: margin} if margin is not None else {})})
    assert [t.constraints for t in searcher._ot_study.trials] == [{"retention": -0.1}, {"retention": math.inf},
                                                                   {"retention": math.inf}]


def test_a_warm_start_seeds_an_unknown_constraint_as_violated(tmp_path, tofu_dir):
    from raysweep.sweep.space import SearchSpace
    from raysweep.sweep.warm_start import earlier_trials

    from .made_sweep import SPACE

    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    _unjudged_trials(c, parent)
    t1 = next(r for r in tracking.child_runs(c, parent) if r.data.tags[tracking.TRIAL_TAG] == "t1")
    tracking.log_metrics(c, t1.info.run_id, {"retention_constraint": -0.1})
    seeded = {t.user_attrs["warm_start_from"].split("/")[1]: t.constraints
              for t in earlier_trials(c, uri, "made", SearchSpace(SPACE, "space.yaml"), OBJECTIVES)}
    runs = {r.info.run_id: r.data.tags[tracking.TRIAL_TAG] for r in tracking.child_runs(c, parent)}
    by_trial = {runs[k]: v for k, v in seeded.items()}
    assert by_trial["t1"] == {"retention": -0.1}
    assert by_trial["t9"] == {"retention": math.inf}  # its constraint metric was NaN: no margin logged


@pytest.mark.slow
def test_a_trial_stopped_mid_run_has_each_evaluation_judged_in_mlflow(tmp_path, tofu_dir, shared_cache):
    """The worker's own loop on a real tiny trial, stopped after its first evaluation (as MO-ASHA
    stops a Ray Train trial: nothing after the loop runs): eval/feasible is in MLflow at that step."""
    import torch

    from raysweep.distributed.worker import WorkerOptions, run_worker
    from raysweep.reporting import build_reporter
    from raysweep.sweep.trial import reporting_options

    job = _sweep_job(tmp_path, tofu_dir, cache=shared_cache, steps=6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    parent = _parent(c, tmp_path, True)
    run = tracking.get_or_create_child(c, parent.info.run_id, parent.info.experiment_id, "t", "feasible", {}, {})
    reporter = build_reporter(reporting_options(job, {"tracking_uri": uri, "target_metrics": {}}, run, "t", "n"), 0)
    run_worker(job, 0, 1, torch.device("cpu"), reporter,
               WorkerOptions(evaluate=False, save_checkpoints=False, stop_at_step=3), None)
    m = c.get_run(run).data.metrics
    utility = [x for x in c.get_metric_history(run, "eval/model_utility")]
    feasible = c.get_metric_history(run, "eval/feasible")
    assert [x.step for x in utility] == [2] and [x.step for x in feasible] == [2]
    assert feasible[0].value == float(utility[0].value >= 0.5)
    assert m["eval/retention_constraint"] == pytest.approx(0.5 - utility[0].value)


def test_a_trial_ended_without_a_result_is_pruned_in_optuna():
    """Tune stops a PAUSED trial (MO-ASHA ``promotion: pause``, at the sweep's end) telling the
    searcher of its end without a result: Optuna records it PRUNED, with no last values."""
    from optuna.trial import TrialState

    from raysweep.sweep.searcher import make_searcher
    from raysweep.sweep.space import SearchSpace

    space = SearchSpace({"unlearn": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "s.yaml")
    space.validate()
    searcher = make_searcher(space, OBJECTIVES, "random", 0, False)
    searcher.suggest("paused")
    searcher.on_trial_complete("paused", None)
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.PRUNED and "last_values" not in trial.user_attrs
