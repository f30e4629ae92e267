"""`raysweep report` (issue 11, item 6; issue 25, items 8-9): from MLflow alone to one
self-contained HTML page, opened in a real headless Chromium - screenshot not blank, every chart
at full column width with its legend and axis labels, the front's points inside their frame, the
front's trial ids and table in the page; fronts over time and hyperparameter importance checked
against answers computed here."""

import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from raysweep.sweep import tracking
from raysweep.sweep.report import pareto_report

from ..browser import dump_dom, not_blank, screenshot
from ..sweep.made_sweep import FRONT, OBJECTIVES, TRIALS, make_sweep
from .importance_sweep import make_importance_sweep, trials

REPO = Path(__file__).resolve().parents[2]
CHARTS = ["front-chart", "methods-chart", "time-chart", "hv-chart", "hv-steps-chart", "parallel-chart"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tofu_dir):
    tmp = tmp_path_factory.mktemp("report")
    c, uri, parent = make_sweep(tmp, tofu_dir=tofu_dir)
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "report", "made", "--tracking-uri", uri,
                          "--out", str(tmp / "out")], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp, tmp / "out", res


@pytest.fixture(scope="module")
def dom(built):
    tmp, out, _ = built
    return dump_dom((out / "report.html").as_uri(), tmp / "profile", size=(1600, 1200))


@pytest.fixture(scope="module")
def imp(tmp_path_factory):
    """The sweep with a known cause, reported in this process (importance logged to its parent)."""
    from raysweep.cli import main

    tmp = tmp_path_factory.mktemp("importance")
    c, uri, parent = make_importance_sweep(tmp)
    assert main(["report", "imp", "--tracking-uri", uri, "--out", str(tmp / "out")]) == 0
    return c, parent, tmp / "out"


def svgs(page: str) -> dict[str, ET.Element]:
    """Each chart of a page (from the file or Chromium's DOM) by id, its namespace dropped."""
    out = {}
    for m in re.finditer(r'<svg[^>]*\bid="([^"]+)".*?</svg>', page, re.S):
        root = ET.fromstring(m.group(0))
        for el in root.iter():
            el.tag = el.tag.split("}")[-1]
        out[m.group(1)] = root
    return out


def test_report_is_self_contained_and_complete(built):
    tmp, out, res = built
    assert "front 3 of 7 points" in res.stdout
    page = (out / "report.html").read_text()
    # nothing fetched from elsewhere: no external script, stylesheet or image
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?://""", page)
    assert "<script" not in page
    # front, each method's front, fronts over time, hypervolume history, importance (all trials; each
    # method has fewer than 4 trials here), parallel coordinates
    assert sorted(svgs(page)) == sorted(CHARTS + ["importance-chart-0"])
    for section in ("Fronts over time", "Hyperparameter importance", "Parallel coordinates",
                    "Hypervolume by finished trials", "Hypervolume by unlearning steps spent"):
        assert section in page, section
    # hover text carries the configuration
    assert re.search(r"<title>t2@2: graddiff / ga \(on the front\)(?:\n.*){2}\nalpha = 1\.5", page)
    md = (out / "report.md").read_text()
    assert "| t2@2 | 2 | graddiff |" in md and (out / "front.svg").exists() and (out / "methods.svg").exists()
    assert "## Fronts over time" in md and "## Hyperparameter importance" in md


def test_report_renders_in_headless_chromium(built, dom):
    tmp, out, _ = built
    table = dom[dom.index('id="front-table"'):]
    table = table[:table.index("</table>")]
    for trial, step in FRONT:  # every front point is labelled on the plot and listed in the table
        label = trial if step == max(TRIALS[trial][3]) else f"{trial}@{step}"
        assert 'class="label"' in dom and f">{label}</text>" in dom, label
        assert f"<td>{label}</td>" in table, label
    for dominated in ("t3", "t5"):
        assert f"<td>{dominated}</td>" not in table


def test_charts_at_1600px_full_width_with_legends_and_axis_labels(built, dom):
    """A screenshot at 1600 px (docs/img/report.png when RAYSWEEP_UPDATE_SCREENSHOTS=1); every
    chart has a legend and axis labels in the DOM, and is laid out at the column's full width
    (read back from Chromium's layout through a probe copy of the page)."""
    tmp, out, _ = built
    png = screenshot((out / "report.html").as_uri(), tmp / "report.png", size=(1600, 5200))
    colours, ink = not_blank(png)
    if os.environ.get("RAYSWEEP_UPDATE_SCREENSHOTS") == "1":
        from PIL import Image, ImageChops

        img = Image.open(png).convert("RGB")
        bottom = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()[3]
        img.crop((0, 0, img.width, bottom + 24)).save(REPO / "docs" / "img" / "report.png", optimize=True)
    charts = svgs(dom)
    for cid, svg in charts.items():
        legend = [el for el in svg.iter("g") if el.get("class") == "legend"]
        assert legend and len(list(legend[0].iter("text"))) >= 1, f"{cid}: no legend"
        labels = [el.text for el in svg.iter("text") if el.get("class") == "axis-label"]
        assert len(labels) >= 2 and all(labels), f"{cid}: axis labels {labels}"
    for cid in ("front-chart", "methods-chart", "time-chart"):
        labels = [el.text for el in charts[cid].iter("text") if el.get("class") == "axis-label"]
        assert labels == [f"{n} ({'lower' if d == 'min' else 'higher'} is better)" for n, d in OBJECTIVES.items()]
    probe = out / "probe.html"  # the report itself carries no script; a copy measures the layout
    probe.write_text((out / "report.html").read_text().replace(
        "</body>", "<script>document.body.dataset.widths = JSON.stringify([...document.querySelectorAll("
                   "'svg.chart')].map(s => [s.id, s.getBoundingClientRect().width]))</script></body>"))
    laid = dump_dom(probe.as_uri(), tmp / "probe-profile", size=(1600, 1200))
    widths = dict(json.loads(re.search(r'data-widths="([^"]+)"', laid).group(1).replace("&quot;", '"')))
    assert sorted(widths) == sorted(charts)
    assert all(w >= 1100 for w in widths.values()), widths
    print(f"report at 1600 px: {png} ({colours} colours, {ink:.0%} ink); chart widths {sorted(set(widths.values()))}")


def test_front_points_strictly_inside_their_frame(dom):
    """Every marker of the three objective-space plots, read from the DOM, lies inside its plot
    frame with its whole radius, not on the edge."""
    charts = svgs(dom)
    checked = 0
    for cid in ("front-chart", "methods-chart", "time-chart"):
        frame = next(el for el in charts[cid].iter("rect") if el.get("class") == "frame")
        x0, y0 = float(frame.get("x")), float(frame.get("y"))
        x1, y1 = x0 + float(frame.get("width")), y0 + float(frame.get("height"))
        points = [el for el in charts[cid].iter("circle") if el.get("class") in ("front", "point")]
        assert points, cid
        for el in points:
            cx, cy, r = float(el.get("cx")), float(el.get("cy")), float(el.get("r"))
            assert x0 < cx - r and cx + r < x1 and y0 < cy - r and cy + r < y1, (cid, cx, cy, r, (x0, y0, x1, y1))
            checked += 1
    print(f"{checked} markers strictly inside their frames")


def test_front_and_method_fronts_drawn_as_staircases(built, dom):
    """The front's line turns through the corner that takes the worse value of each objective
    between neighbours (here t4 (0.1, 0.3) -> t2@2 (0.2, 0.6) -> t1 (0.3, 0.7)): 5 vertices, each
    segment horizontal or vertical - no diagonal."""
    charts = svgs(dom)
    line = next(el for el in charts["front-chart"].iter("polyline") if el.get("class") == "staircase")
    pts = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert len(pts) == 2 * len(FRONT) - 1
    assert all(a[0] == b[0] or a[1] == b[1] for a, b in zip(pts, pts[1:])), pts
    fronts = {el.get("cx") for el in charts["front-chart"].iter("circle") if el.get("class") == "front"}
    assert {f"{x:.1f}" for x, _ in pts} == fronts
    legend = " ".join(t.text for g in charts["methods-chart"].iter("g") if g.get("class") == "legend"
                      for t in g.iter("text"))
    assert all(m in legend for m in ("graddiff", "ngdiff", "sago")), legend


def test_fronts_over_time_worked_example(built, tofu_dir, tmp_path):
    """The front after ceil(25/50/75/100% of 5) = 2, 3, 4, 5 trials (t1..t5 finish in that
    order), by brute-force dominance among the feasible points of those trials."""
    c = tracking.client(f"sqlite:///{built[0] / 'mlflow.db'}")
    report = pareto_report(c, f"sqlite:///{built[0] / 'mlflow.db'}", "made")
    got = [(f["trials"], sorted((r["trial_id"], r["step"]) for r in f["front"])) for f in report["fronts_over_time"]]
    sign = [1 if d == "max" else -1 for d in OBJECTIVES.values()]
    order = sorted(TRIALS)
    want = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        k = math.ceil(frac * len(order))
        pts = [(t, s, v) for t in order[:k] for s, v in TRIALS[t][3].items() if TRIALS[t][4]]

        def dominated(v):
            return any(all(g * a >= g * b for g, a, b in zip(sign, w, v)) and w != v for _, _, w in pts)
        want.append((k, sorted((t, s) for t, s, v in pts if not dominated(v))))
    assert got == want, got
    page = (built[1] / "report.html").read_text()
    legend = " ".join(t.text for g in svgs(page)["time-chart"].iter("g") if g.get("class") == "legend"
                      for t in g.iter("text"))
    for frac, (k, _) in zip((25, 50, 75, 100), want):
        assert f"after {frac}% ({k} trials)" in legend, legend
    print(f"fronts over time: {want}")


def test_anytime_curve_hypervolume_by_steps_spent(built):
    """Issue 26: the sweep's own anytime curve - after each finished trial (t1..t5 finish in that
    order), the unlearning steps the finished trials trained (each up to its last evaluation) and
    the hypervolume of their feasible points; drawn in the report as its own chart."""
    uri = f"sqlite:///{built[0] / 'mlflow.db'}"
    history = pareto_report(tracking.client(uri), uri, "made")["hypervolume_history"]
    order = sorted(TRIALS)
    steps = [sum(max(TRIALS[t][3]) for t in order[:k]) for k in range(1, len(order) + 1)]
    assert [h["steps"] for h in history] == steps == [4, 8, 12, 16, 20]
    chart = svgs((built[1] / "report.html").read_text())["hv-steps-chart"]
    dots = [c for c in chart.iter("circle")]
    xs = [float(c.get("cx")) for c in dots]
    assert len(dots) == len(order) and xs == sorted(xs) and len(set(xs)) == len(xs)
    assert [t.text for t in chart.iter("text") if t.text and "steps spent" in t.text]  # its x label
    assert "| trials | last trial | steps spent | hypervolume |" in (built[1] / "report.md").read_text()


def test_front_table_names_runs_and_keeps_code_whole(built, tofu_dir):
    """sqlite: the run's name with its id in a tooltip and short monospace form, no bare id; an
    http tracking server: a link named after the run. Code cells never wrap mid-word."""
    from raysweep.report.html import render_html

    c = tracking.client(f"sqlite:///{built[0] / 'mlflow.db'}")
    report = pareto_report(c, f"sqlite:///{built[0] / 'mlflow.db'}", "made")
    page = (built[1] / "report.html").read_text()
    table = page[page.index("id='front-table'"):]
    table = table[:table.index("</table>")]
    for r in report["front"]:
        name = tracking.child_run_name(r["method"], r["forget"], r["trial_id"])
        assert f"<span title='run id {r['run_id']}'>{name}</span> <code>{r['run_id'][:8]}</code>" in table
        assert f">{r['run_id']}<" not in table
    assert re.search(r"td code,td\.run\{white-space:nowrap;overflow-wrap:normal;word-break:normal\}", page)
    assert "word-break:break-all" not in page and "<div class='scroll'><table id='front-table'>" in page
    served = render_html(report, link_base="http://mlflow.example:5000/")
    r = report["front"][0]
    assert re.search(rf"<a href='http://mlflow.example:5000/#/experiments/\d+/runs/{r['run_id']}[^']*' "
                     rf"title='run id {r['run_id']}'>{re.escape(r['run_name'])}</a>", served)


def test_importance_ranks_the_cause_of_each_objective(imp):
    """forget_rougeL_recall is a function of lr alone, so lr explains (nearly) all of its variance;
    retain_rougeL_recall is the method's constant, so method does. Per method (its alpha included),
    lr still ranks first for forget. Logged to the parent run as importance.json."""
    c, parent, out = imp
    logged = json.loads(Path(c.download_artifacts(parent.info.run_id, "importance.json")).read_text())
    groups = {g["name"]: g for g in logged["groups"]}
    whole = groups["all trials"]
    assert whole["n_trials"] == len(trials()) and whole["params"] == ["method", "unlearn.lr"]
    assert whole["importance"]["forget_rougeL_recall"]["unlearn.lr"] > 0.9, whole
    assert whole["importance"]["retain_rougeL_recall"]["method"] > 0.9, whole
    for m in ("graddiff", "sago"):
        g = groups[f"method {m}"]
        assert g["params"] == [f"method.{m}.alpha", "unlearn.lr"]
        forget = g["importance"]["forget_rougeL_recall"]
        assert max(forget, key=forget.get) == "unlearn.lr", g
    assert groups["method ngdiff"]["constant"] == ["retain_rougeL_recall"]  # its retain is one value
    page = (out / "report.html").read_text()
    assert "ranked over the parameters common to all trials" in page
    assert {f"importance-chart-{i}" for i in range(4)} <= set(svgs(page))
    print("importance (all trials): " + json.dumps(whole["importance"]))


def test_parallel_coordinates_gaps_flipped_min_axes_log_lr_method_axis(imp):
    c, parent, out = imp
    chart = svgs((out / "report.html").read_text())["parallel-chart"]
    assert "n/a" not in ET.tostring(chart, encoding="unicode")
    labels = {el.text: float(el.get("x")) for el in chart.iter("text") if el.get("class") == "axis-label"}
    assert list(labels)[:3] == ["method", "alpha", "lr (log)"], labels
    ticks: dict[float, list] = {}
    for el in chart.iter("text"):
        if el.get("class") == "tick":
            ticks.setdefault(float(el.get("x")) - 5, []).append((float(el.get("y")), el.text))
    assert [t for _, t in sorted(ticks[labels["method"]])] == ["sago", "ngdiff", "graddiff"]
    lr = {t: y for y, t in ticks[labels["lr (log)"]]}
    # a log axis: 1e-5 -> 2e-5 spans what 1e-4 -> 2e-4 does (a linear one would squash the low decade)
    assert lr["1e-05"] - lr["2e-05"] == pytest.approx(lr["0.0001"] - lr["0.0002"], abs=0.2) and lr["1e-05"] - lr["2e-05"] > 30
    # min flipped: lower (better) forget values higher on the page; max: higher values higher
    forget = sorted((float(t), y) for y, t in ticks[labels["forget_rougeL_recall (min, flipped: better ↑)"]])
    retain = sorted((float(t), y) for y, t in ticks[labels["retain_rougeL_recall (max: better ↑)"]])
    assert [y for _, y in forget] == sorted(y for _, y in forget) and forget[0][1] < forget[-1][1]
    assert retain[0][1] > retain[-1][1]
    # a method without alpha: its line breaks there (two subpaths), it does not dive to a fake value
    lines = [g for g in chart.iter("g") if g.get("class") == "line"]
    ngdiff = [g for g in lines if next(g.iter("title")).text.split(": ")[1].startswith("ngdiff")]
    assert len(ngdiff) == 5 and all(next(g.iter("path")).get("d").count("M") == 2 for g in ngdiff)
    others = [g for g in lines if g not in ngdiff]
    assert all(next(g.iter("path")).get("d").count("M") == 1 for g in others)



def test_importance_of_a_large_group_is_ranked_on_a_bounded_seeded_sample_and_says_so():
    """fANOVA's cost grows faster than the trials (5,000 ran for minutes, issue 28): a group of more
    than importance.SAMPLE trials is ranked on a seeded random sample of SAMPLE, the same one each
    time, and the report states both counts. The cause (forget = f(lr)) still ranks first."""
    import numpy as np

    from raysweep.report.html import _importance_section
    from raysweep.sweep import importance

    from .importance_sweep import OBJECTIVES, forget_of

    rng = np.random.default_rng(1)
    n = importance.SAMPLE * 5 // 2
    rows = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-5, -3))
        params = {"method": "graddiff", "unlearn.lr": lr, "method.graddiff.alpha": float(rng.uniform(0.3, 3))}
        rows.append({"trial_id": f"t{i}", "method": "graddiff", "params": params,
                     "objectives": {"forget_rougeL_recall": forget_of(lr), "retain_rougeL_recall": float(rng.uniform())}})
    imp = importance.param_importances(rows, OBJECTIVES)
    (whole,) = imp["groups"]  # one method: the whole sweep only
    assert (whole["n_trials"], whole["n_sampled"]) == (n, importance.SAMPLE)
    forget = whole["importance"]["forget_rougeL_recall"]
    assert max(forget, key=forget.get) == "unlearn.lr" and forget["unlearn.lr"] > 0.9, forget
    # seeded: the same sample each time, not simply the first SAMPLE rows; a small group whole
    assert importance.sample(rows, importance.SAMPLE) == importance.sample(rows, importance.SAMPLE)
    assert importance.sample(rows, importance.SAMPLE) != rows[:importance.SAMPLE]
    assert importance.sample(rows[:10], importance.SAMPLE) == rows[:10]
    section = "\n".join(_importance_section({"importance": imp, "objectives": OBJECTIVES}))
    assert f"{importance.SAMPLE} of {n} trials (a seeded random sample)" in section
