"""`raysweep report` (issue 11, item 6): from MLflow alone to one self-contained HTML page, opened
in a real headless Chromium - screenshot not blank, the front's trial ids and table in the page."""

import re
import subprocess
import sys

import pytest

from ..browser import dump_dom, not_blank, screenshot
from ..sweep.made_sweep import FRONT, TRIALS, make_sweep


@pytest.fixture(scope="module")
def built(tmp_path_factory, tofu_dir):
    tmp = tmp_path_factory.mktemp("report")
    c, uri, parent = make_sweep(tmp, tofu_dir=tofu_dir)
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "report", "made", "--tracking-uri", uri,
                          "--out", str(tmp / "out")], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp, tmp / "out", res


def test_report_is_self_contained_and_complete(built):
    tmp, out, res = built
    assert "front 3 of 7 points" in res.stdout
    page = (out / "report.html").read_text()
    # nothing fetched from elsewhere: no external script, stylesheet or image
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?://""", page)
    assert "<script" not in page
    # every chart and the table: front (scatter), per method, hypervolume history, parallel coordinates
    assert page.count("<svg") == 3 + len({m for m, *_ in TRIALS.values()})
    assert "Parallel coordinates" in page and "Hypervolume by finished trials" in page
    # hover text carries the configuration
    assert re.search(r"<title>t2@2: graddiff / ga \(on the front\)(?:\n.*){2}\nalpha = 1\.5", page)
    md = (out / "report.md").read_text()
    assert "| t2@2 | 2 | graddiff |" in md and (out / "front.svg").exists()


def test_report_renders_in_headless_chromium(built):
    tmp, out, _ = built
    url = (out / "report.html").as_uri()
    png = screenshot(url, tmp / "report.png", size=(1280, 2400))
    colours, ink = not_blank(png)
    dom = dump_dom(url, tmp / "profile")
    table = dom[dom.index('id="front-table"'):]
    table = table[:table.index("</table>")]
    for trial, step in FRONT:  # every front point is labelled on the plot and listed in the table
        label = trial if step == max(TRIALS[trial][3]) else f"{trial}@{step}"
        assert f'class="label"' in dom and f">{label}</text>" in dom, label
        assert f"<td>{label}</td>" in table, label
    for dominated in ("t3", "t5"):
        assert f"<td>{dominated}</td>" not in table
    print(f"report screenshot: {png} ({colours} colours, {ink:.0%} ink)")
