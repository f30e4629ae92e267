"""The front where MLflow users look (issue 11, item 5), on a hand-made finished sweep in real
sqlite MLflow: run names, `raysweep.pareto` marks and ranks that follow the front when it moves,
direction tags, flat hyperparameters, the parent's files and description, logged models."""

import csv
import io
import json

import pytest

from raysweep.sweep import tracking
from raysweep.sweep.report import point_label
from raysweep.sweep.front_marks import FRONT_FILTER, front_filter, mark_children, publish, sweep_filter
from raysweep.sweep.report import pareto_report

from .made_sweep import FRONT, OBJECTIVES, make_sweep


def _made(tmp_path, tofu_dir):
    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    return c, uri, parent, pareto_report(c, uri, "made")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tofu_dir):
    """Shared by the tests whose writes (marks, files, models) are idempotent."""
    return _made(tmp_path_factory.mktemp("made"), tofu_dir)


def _children(c, parent):
    return {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(c, parent)}


def test_runs_are_named_by_method_forget_and_trial_and_carry_directions_and_flat_params(made):
    c, uri, parent, report = made
    kids = _children(c, parent)
    assert kids["t1"].data.tags["mlflow.runName"] == "sago-npo-trial-t1"
    assert kids["t2"].data.tags["mlflow.runName"] == "graddiff-ga-trial-t2"
    for r in list(kids.values())[:5]:
        if r.data.tags["raysweep.trial_id"] == "t6":
            continue
        assert r.data.tags["raysweep.objective.forget_rougeL_recall"] == "min"
        assert r.data.tags["raysweep.objective.retain_rougeL_recall"] == "max"
    # one `alpha` column across methods, whatever method drew it
    assert kids["t1"].data.params["alpha"] == "0.5" and kids["t2"].data.params["alpha"] == "1.5"
    assert kids["t1"].data.params["beta"] == "0.2" and kids["t1"].data.params["lr"] == "0.001"
    # the report keeps the searched names apart from the flat ones
    t1 = next(r for r in report["trials"] if r["trial_id"] == "t1")
    assert "alpha" not in t1["params"] and t1["flat_params"]["alpha"] == "0.5"


def test_the_front_filter_finds_exactly_the_front_runs_with_their_ranks(made):
    c, uri, parent, report = made
    assert {(r["trial_id"], r["step"]) for r in report["front"]} == FRONT
    mark_children(c, report)
    found = c.search_runs([parent.info.experiment_id], filter_string=front_filter("made"))
    assert {r.data.tags["raysweep.trial_id"] for r in found} == {"t1", "t2", "t4"}
    kids = _children(c, parent)
    assert kids["t2"].data.tags["raysweep.pareto.steps"] == "2"  # its mid-run point, not its final one
    # the shared view: every candidate run (front and dominated; not the parent, not the failed
    # trial), sorted by the first objective, with one dot per run in its scatter
    everyone = c.search_runs([parent.info.experiment_id], filter_string=sweep_filter("made"))
    assert {r.data.tags["raysweep.trial_id"] for r in everyone} == {"t1", "t2", "t3", "t4", "t5"}
    state = json.loads(c.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.raysweep-front-made"])
    first, second = report["objectives"]
    assert state["orderByKey"] == f"metrics.`objective/{first}`" and state["orderByAsc"] is True
    assert state["useGroupedValuesInCharts"] is False and state["runsHiddenMode"] == "SHOW_ALL"
    (chart,) = state["compareRunCharts"]
    assert (chart["type"], chart["xaxis"]["key"], chart["yaxis"]["key"]) == \
        ("SCATTER", f"objective/{first}", f"objective/{second}")
    assert {"tags.`raysweep.method`", "tags.`raysweep.model`"} <= set(state["selectedColumns"])
    assert kids["t3"].data.tags["raysweep.pareto"] == "dominated" and int(kids["t3"].data.tags["raysweep.pareto.rank"]) >= 1
    # infeasible: ranked after every feasible point although it is best on both objectives
    assert kids["t5"].data.tags["raysweep.pareto"] == "dominated"
    rank = {t: int(k.data.tags["raysweep.pareto.rank"]) for t, k in kids.items() if "raysweep.pareto.rank" in k.data.tags}
    assert rank["t5"] > rank["t3"] and rank["t1"] == 0
    colours = {t: k.data.tags.get("mlflow.runColor") for t, k in kids.items() if t != "t6"}
    assert colours == {"t1": "#d62728", "t2": "#d62728", "t4": "#d62728", "t3": "#aaaaaa", "t5": "#aaaaaa"}
    assert not any(k.startswith("pareto/") for kid in kids.values() for k in kid.data.metrics)  # marks are tags
    assert "raysweep.pareto" not in kids["t6"].data.tags  # failed: no candidate point


def test_marks_are_refreshed_when_a_new_trial_moves_the_front(tmp_path, tofu_dir):
    c, uri, parent, report = _made(tmp_path, tofu_dir)
    mark_children(c, report)
    # a new finished trial that dominates t4 (forget 0.08 <= 0.10, retain 0.4 > 0.3)
    run = tracking.get_or_create_child(c, parent.info.run_id, parent.info.experiment_id, "t7", "made",
                                       {"method": "ngdiff"}, {"raysweep.method": "ngdiff", "raysweep.forget": "ga"})
    tracking.log_metrics(c, run, {"objective/forget_rougeL_recall": 0.08, "objective/retain_rougeL_recall": 0.4,
                                  "feasible": 1.0})
    c.set_terminated(run, "FINISHED")
    mark_children(c, pareto_report(c, uri, "made"))
    kids = _children(c, parent)
    assert kids["t4"].data.tags["raysweep.pareto"] == "dominated"
    assert kids["t7"].data.tags["raysweep.pareto"] == "front"
    assert kids["t4"].data.tags["raysweep.pareto.rank"] == "1" and kids["t7"].data.tags["raysweep.pareto.rank"] == "0"


def test_parent_gets_front_files_hypervolume_history_description_and_logged_models(made):
    c, uri, parent, report = made
    publish(c, report)
    pid = parent.info.run_id
    front = json.loads(open(c.download_artifacts(pid, "pareto_front.json")).read())["front"]
    assert {(r["trial_id"], r["step"]) for r in front} == FRONT
    assert all(r["checkpoint"] and r["run_id"] and "alpha" in r["hyperparameters"] or r["method"] == "ngdiff"
               for r in front)
    rows = list(csv.DictReader(io.StringIO(open(c.download_artifacts(pid, "pareto_front.csv")).read())))
    assert {(r["trial_id"], int(r["step"])) for r in rows} == FRONT and "alpha" in rows[0]
    header = open(c.download_artifacts(pid, "pareto_front.csv")).readline().strip().split(",")
    assert header[:4] == ["trial_id", "method", *report["objectives"]]  # what MLflow's preview shows first
    assert {a.path for a in c.list_artifacts(pid)} >= {"pareto_front.csv", "pareto_front.json",
                                                        "hypervolume_by_trials.png"}
    hv = c.get_metric_history(pid, "pareto/hypervolume_by_trials")
    assert sorted(m.step for m in hv) == [1, 2, 3, 4, 5]
    values = [m.value for m in sorted(hv, key=lambda m: m.step)]
    assert values == sorted(values) and values[-1] == pytest.approx(report["hypervolume"])
    note = c.get_run(pid).data.tags["mlflow.note.content"]
    for rec in front:
        assert f"#/experiments/{parent.info.experiment_id}/runs/{rec['run_id']}?workflowType=machine_learning" in note
    assert "t2@2" in note and "graddiff-ga-trial-t2" in note

    models = c.search_logged_models([parent.info.experiment_id])
    assert {m.tags["raysweep.point"] for m in models} == {"t1", "t2@2", "t4"}
    assert all(m.tags["raysweep.pareto"] == "front" and m.tags["raysweep.checkpoint_path"] for m in models)
    kids = _children(c, parent)
    assert kids["t2"].data.tags["raysweep.checkpoint_path"].endswith("checkpoint_000002")
    # each front run lists its model (the run's outputs), at the point's step; the model says
    # what it is, where its weights are and how to load it
    step_of = {point_label(r): int(r["step"] or 0) for r in report["front"]}
    for m in models:
        outputs = c.get_run(m.source_run_id).outputs.model_outputs
        assert [o.step for o in outputs if o.model_id == m.model_id] == [step_of[m.tags["raysweep.point"]]]
        note = m.tags["mlflow.note.content"]
        assert f"Pareto-front point {m.tags['raysweep.point']}" in note and m.tags["raysweep.checkpoint_path"] in note
        assert "from_pretrained" in note and f"raysweep export made {m.tags['raysweep.point']}" in note
    # registrable, as a model a user keeps
    c.create_registered_model("unlearned")
    version = c.create_model_version("unlearned", models[0].artifact_location, run_id=models[0].source_run_id,
                                     model_id=models[0].model_id)
    assert int(version.version) == 1 and c.get_model_version("unlearned", "1").source == models[0].artifact_location

    # published again (raysweep pareto after the sweep): no second model for the same point
    publish(c, pareto_report(c, uri, "made"))
    assert len(c.search_logged_models([parent.info.experiment_id])) == 3


def test_the_refresh_callback_marks_the_runs_while_the_sweep_runs(tmp_path, tofu_dir):
    from raysweep.sweep.front_marks import FrontRefresh

    c, uri, parent = make_sweep(tmp_path, tofu_dir=tofu_dir)
    refresh = FrontRefresh(uri, "made", every_seconds=3600)
    refresh.on_trial_complete(0, [], None)
    refresh.wait()
    found = c.search_runs([parent.info.experiment_id], filter_string=FRONT_FILTER)
    assert {r.data.tags["raysweep.trial_id"] for r in found} == {"t1", "t2", "t4"}
    # throttled: a second trial ending within the interval does not recompute
    c.set_tag(found[0].info.run_id, "raysweep.pareto", "stale")
    refresh.on_trial_complete(0, [], None)
    assert c.get_run(found[0].info.run_id).data.tags["raysweep.pareto"] == "stale"
