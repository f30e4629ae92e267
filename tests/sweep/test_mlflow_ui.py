"""The front in MLflow's own UI (issue 11, item 5; issue 25, items 2-3), seen in a real headless
Chromium against a real `mlflow server` on loopback: the link raysweep prints opens the
model-training view in chart mode, the sweep's runs grouped into front and dominated, and the
objectives' scatter with one dot per evaluated run; a front run's page lists its logged model, and
the logged model's page shows its description.

With RAYSWEEP_UPDATE_SCREENSHOTS=1 the view's screenshot is saved as docs/img/mlflow_front.png
(the README shows it)."""

import os
import re
import shutil

import pytest

from raysweep.sweep.front_marks import front_runs_link, publish
from raysweep.sweep.report import pareto_report

from ..browser import Browser, dump_dom, not_blank, screenshot
from ..conftest import REPO
from .made_sweep import make_sweep


def _section(dom: str, title: str) -> str:
    """The DOM of one chart section of the runs page, from its header to the next one."""
    header = 'data-testid="experiment-view-compare-runs-section-header"'
    start = dom.index(f">{title}<")
    end = dom.find(header, start + 100)
    return dom[start:end if end > 0 else len(dom)]


@pytest.mark.slow  # the server's start and the UI's renders take ~2 min here
def test_front_view_in_the_mlflow_ui(mlflow_server, tmp_path, tofu_dir):
    c, uri, parent = make_sweep(tmp_path, name="ui", tofu_dir=tofu_dir, uri=mlflow_server)
    report = pareto_report(c, uri, "ui")
    publish(c, report)
    url = front_runs_link(report["experiment_id"], "ui", mlflow_server + "/")
    png = screenshot(url, tmp_path / "mlflow_front.png", size=(1600, 1000), budget_ms=40000)
    colours, ink = not_blank(png)
    dom = dump_dom(url, tmp_path / "profile", budget_ms=40000, size=(1600, 1000))
    shown = set(re.findall(r"[a-z_]+-[a-z]+-trial-t\d", dom))
    runs = {r["run_id"] for r in report["trials"]}
    assert shown == {"sago-npo-trial-t1", "graddiff-ga-trial-t2", "graddiff-npo-trial-t3", "ngdiff-ga-trial-t4",
                     "sago-ga-trial-t5"}, shown
    assert "Group: front" in dom and "Group: dominated" in dom
    # the objectives' scatter: one rendered dot per evaluated run, not one per group
    scatter = _section(dom, "Pareto front")
    assert scatter.count('class="point plotly-customdata"') == len(runs) == 5
    # front red, dominated grey
    fills = re.findall(r'class="point plotly-customdata"[^>]*fill: (rgb\([^)]*\))', scatter)
    front_runs = {r["run_id"] for r in report["front"]}
    assert sorted(fills) == sorted(["rgb(214, 39, 40)"] * len(front_runs) + ["rgb(170, 170, 170)"] * (5 - len(front_runs)))
    # the model-training view: its side bar ("Runs"), not the GenAI one ("Overview", "Training runs")
    assert ">Runs<" in dom and ">Overview<" not in dom and ">Training runs<" not in dom
    # a front run's page lists its logged model; the model's page says what it is and how to load it
    models = c.search_logged_models([report["experiment_id"]])
    model = next(m for m in models if m.tags["raysweep.point"] == "t1")
    run_page = dump_dom(f"{mlflow_server}/#/experiments/{report['experiment_id']}/runs/{model.source_run_id}"
                        "?workflowType=machine_learning", tmp_path / "profile", budget_ms=20000, size=(1600, 1000))
    assert f"models/{model.model_id}" in run_page
    model_page = dump_dom(f"{mlflow_server}/#/experiments/{report['experiment_id']}/models/{model.model_id}"
                          "?workflowType=machine_learning", tmp_path / "profile", budget_ms=20000, size=(1600, 1000))
    assert "Pareto-front point t1" in model_page and "from_pretrained" in model_page
    # control: the same page without raysweep's parameter opens in the GenAI view (MLflow 3.x's
    # default for a fresh browser, whatever the experiment's mlflow.experimentKind tag says)
    c.set_experiment_tag(report["experiment_id"], "mlflow.experimentKind", "custom_model_development")
    genai = dump_dom(url.replace("&workflowType=machine_learning", ""), tmp_path / "profile2", budget_ms=20000)
    assert ">Overview<" in genai and ">Training runs<" in genai
    _run_opened_from_the_view(url, tmp_path / "profile3")
    if os.environ.get("RAYSWEEP_UPDATE_SCREENSHOTS"):
        (REPO / "docs" / "img").mkdir(exist_ok=True)
        shutil.copy(png, REPO / "docs" / "img" / "mlflow_front.png")
    print(f"MLflow UI screenshot: {png} ({colours} colours)")


RUN_LINKS = "[...document.querySelectorAll('a[href*=\"/runs/\"]')]"
SIDEBAR = "[...document.querySelectorAll('nav a, nav button')].map(e => e.textContent.trim())"


def _open_run_from_the_view(page, url: str) -> list[str]:
    """Click trial t1's name in the view's table, as a person does; the side bar it lands on."""
    page.goto(url)
    page.wait_for(f"{RUN_LINKS}.some(a => a.textContent.includes('trial-t1'))", 90, "the view's run links")
    page.eval(f"{RUN_LINKS}.find(a => a.textContent.includes('trial-t1')).click()")
    page.wait_for("/#\\/experiments\\/\\d+\\/runs\\/[0-9a-f]{32}/.test(location.href)", 30, "the run's page")
    return page.wait_for(f"(s => s.length > 3 && s)({SIDEBAR})", 30, "the run page's side bar")


def _run_opened_from_the_view(url: str, profile) -> None:
    """Issue 25, item 3: MLflow 3.17's run links drop the view's ``workflowType``, so in a browser
    that never chose, a run opens under the GenAI side bar (README: "one click"). After the one
    click on "Model training" (MLflow keeps it in the browser), a run opened from the view stays
    in the model-training view."""
    with Browser(profile) as browser:
        page = browser.open("about:blank")
        first = _open_run_from_the_view(page, url)
        assert "Overview" in first and "Runs" not in first, first  # MLflow's fallback: the GenAI side bar
        page.eval("[...document.querySelectorAll('div[role=button]')].find(e => e.textContent.trim() == 'Model training').click()")
        page.wait_for("localStorage.getItem('mlflow.workflowType_v1') == '\"machine_learning\"'", 20, "the stored choice")
        after = _open_run_from_the_view(page, url)
        assert "Runs" in after and "Models" in after and "Overview" not in after, after
