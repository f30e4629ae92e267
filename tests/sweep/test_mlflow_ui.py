"""The front in MLflow's own UI (issue 11, item 5), seen in a real headless Chromium against a
real `mlflow server` on loopback: the link raysweep writes opens the model-training view (not the
GenAI one) with the runs table showing exactly the front's runs, named by method."""

import re

import pytest

from raysweep.sweep.front_marks import front_runs_link, publish
from raysweep.sweep.report import pareto_report

from ..browser import dump_dom, not_blank, screenshot
from .made_sweep import make_sweep


@pytest.mark.slow  # the server's start and the UI's first render take ~40 s here
def test_front_view_in_the_mlflow_ui(mlflow_server, tmp_path, tofu_dir):
    c, uri, parent = make_sweep(tmp_path, name="ui", tofu_dir=tofu_dir, uri=mlflow_server)
    report = pareto_report(c, uri, "ui")
    publish(c, report, models=False)
    url = front_runs_link(report["experiment_id"], "ui", mlflow_server + "/")
    png = screenshot(url, tmp_path / "mlflow_front.png", size=(1600, 1000), budget_ms=20000)
    colours, ink = not_blank(png)
    dom = dump_dom(url, tmp_path / "profile", budget_ms=20000, size=(1600, 1000))
    shown = set(re.findall(r"[a-z_]+-[a-z]+-trial-t\d", dom))
    assert shown == {"sago-npo-trial-t1", "graddiff-ga-trial-t2", "ngdiff-ga-trial-t4"}, shown
    assert "Group: front" in dom
    # the model-training view: its side bar ("Runs"), not the GenAI one ("Overview", "Training runs")
    assert ">Runs<" in dom and ">Overview<" not in dom and ">Training runs<" not in dom
    # control: the same page without raysweep's parameter opens in the GenAI view (MLflow 3.x's
    # default for a fresh browser, whatever the experiment's mlflow.experimentKind tag says)
    c.set_experiment_tag(report["experiment_id"], "mlflow.experimentKind", "custom_model_development")
    genai = dump_dom(url.replace("&workflowType=machine_learning", ""), tmp_path / "profile2", budget_ms=20000)
    assert ">Overview<" in genai and ">Training runs<" in genai
    print(f"MLflow UI screenshot: {png} ({colours} colours)")
