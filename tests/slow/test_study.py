"""The study's smallest sweep, end to end: `raysweep launch` of the method-study job (one method,
one trial, prior knowledge on), then `jobs/study/make_tables.py` reads MLflow and prints the
method table with that sweep's hypervolume and writes a small front plot, and `raysweep report`
summarises the sweep in a page that renders in headless Chromium with its front trial in it."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..browser import dump_dom, not_blank, screenshot

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}


def test_smallest_study_sweep_and_its_tables(tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The cache is the job's default: prepared models of an earlier study run are reused.
    launch = subprocess.run(
        [sys.executable, "-m", "raysweep.cli", "launch", "jobs/study/method.yaml", "--name", "study-method-mgda-o0",
         "--tracking-uri", db, "--storage", str(tmp_path / "runs"),
         "--set", "sweep.search_space=../../search_spaces/study/mgda.yaml", "--set", "sweep.num_trials=1"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=3600)
    assert launch.returncode == 0, launch.stderr[-3000:]
    out = tmp_path / "plots"
    tables = subprocess.run([sys.executable, "jobs/study/make_tables.py", "--tracking-uri", db, "--out", str(out),
                             "--only", "method"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert tables.returncode == 0, tables.stderr[-3000:]
    row = next(line for line in tables.stdout.splitlines() if line.startswith("mgda "))
    trials, hv = re.match(r"mgda\s+(\d+)\s+([0-9.]+)", row).groups()
    assert int(trials) == 1 and 0.0 <= float(hv) <= 1.0
    plot = out / "method_fronts.png"
    assert plot.exists() and 1_000 < plot.stat().st_size < 200_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = subprocess.run([sys.executable, "-m", "raysweep.cli", "report", "study-method-mgda-o0", "--tracking-uri", db,
                             "--out", str(tmp_path / "report")], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    page = tmp_path / "report" / "report.html"
    not_blank(screenshot(page.as_uri(), tmp_path / "report.png", size=(1280, 2000)))
    dom = dump_dom(page.as_uri(), tmp_path / "profile")
    table = dom[dom.index('id="front-table"'):]
    assert "mgda" in table[:table.index("</table>")]


def test_paired_sweep_exports_to_the_csv_and_its_table_reprints(tmp_path):
    """Issue 27's path: a paired sweep (grid sampler, default weights, lr only) -> MLflow ->
    `make_tables.py --export` -> per-point CSV -> `--from` prints the paired table from the CSV alone."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for m in ("graddiff", "sago", "mgda"):  # three methods: the fewest the Friedman line takes
        launch = subprocess.run(
            [sys.executable, "-m", "raysweep.cli", "launch", "jobs/study/method.yaml", "--name",
             f"study-paired-{m}-o0-s0", "--tracking-uri", db, "--storage", str(tmp_path / "runs"),
             "--set", f"sweep.search_space=../../search_spaces/study/paired/{m}.yaml", "--set", "sweep.sampler=grid",
             "--set", "sweep.grid_points=2", "--set", "sweep.num_trials=2"],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=3600)
        assert launch.returncode == 0, launch.stderr[-3000:]
    csv_path = tmp_path / "points.csv"
    export = subprocess.run([sys.executable, "jobs/study/make_tables.py", "--tracking-uri", db, "--export",
                             str(csv_path), "--commit", "study-paired=abc1234"], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    # At most 2 points per sweep: a trial the divergence guard stopped (lr 1e-2) has none.
    assert 3 <= len(rows) <= 3 * 2 and all(r["commit"] == "abc1234" for r in rows)
    assert {r["method"] for r in rows} == {"graddiff", "sago", "mgda"}
    assert all(int(r["cut_pairs"]) > 0 for r in rows)  # method.yaml cuts pairs at eval.max_length 96
    tables = subprocess.run([sys.executable, "jobs/study/make_tables.py", "--from", str(csv_path)], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert "lr 0.0005" in tables.stdout and "lr 0.01" in tables.stdout  # the grid's two ends
    assert re.search(r"^mgda\s+\S+ / ", tables.stdout, flags=re.M)
    assert "Friedman (blocks = (subset, seed, lr)" in tables.stdout and "raysweep commit abc1234" in tables.stdout
