"""A real sweep: local Ray, Ray Tune + a real Optuna study, Ray Train trials, sqlite MLflow; then
the front from MLflow alone, and the CLI's one-line errors."""

import json
from pathlib import Path
import os
import re
import subprocess
import sys

import pytest
import yaml

from ..conftest import REPO, tiny_job


def constrained_job(tmp_path, tofu_dir, cache, n_trials=3):
    path = tiny_job(tmp_path, tofu_dir, cache, steps=3, batch_size=4)
    job = yaml.safe_load(path.read_text())
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        # graddiff with a large retain weight raises retain probability; GA alone lowers it.
        "method": {"graddiff": {"alpha": {"choice": [0.0, 4.0]}}},
        "unlearn": {"lr": {"loguniform": [3e-3, 3e-2]}},
    }))
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8}
    job["sweep"] = {
        "search_space": str(space),
        "objectives": {"forget_answer_loss": "max", "retain_answer_loss": "min"},
        "constraint": {"metric": "retain_answer_prob", "at_least_fraction_of_target": 1.0},
        "sampler": "random", "num_trials": n_trials, "max_concurrent": 2, "seed": 2,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage_path": str(tmp_path / "runs"),
    }
    path.write_text(yaml.safe_dump(job))
    return path


def raysweep(*args, cwd):
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "raysweep.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900, env=env)


def launch_job(tmp, job: dict, file: str, name: str):
    """Write ``job`` (its ``sweep`` block tracked in ``tmp``'s sqlite, stored in ``tmp/runs``) to
    ``tmp/file``, prepare its target, `raysweep launch` it as ``name``: (job path, tracking URI,
    the sweep's Pareto report)."""
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    job["sweep"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", storage_path=str(tmp / "runs"))
    path = tmp / file
    path.write_text(yaml.safe_dump(job))
    prepare(load_job(path))
    res = raysweep("launch", str(path), "--name", name, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    uri = job["sweep"]["tracking_uri"]
    return path, uri, pareto_report(tracking.client(uri), uri, name)


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tofu_dir, shared_cache):
    """`raysweep launch` as a user runs it: a fresh process, everything it prints captured."""
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    tmp = tmp_path_factory.mktemp("sweep")
    path = constrained_job(tmp, tofu_dir, shared_cache)
    prepare(load_job(path))  # the shared target; the sweep then only looks it up
    res = raysweep("launch", str(path), "--name", "constrained", cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, load_job(path), res


@pytest.fixture(scope="module")
def finished_sweep(launched):
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp, job, _ = launched
    uri = job.sweep.tracking_uri
    return tmp, job, pareto_report(tracking.client(uri), uri, "constrained")


def test_launch_ends_with_the_front_link_and_the_report_command(launched):
    """Issue 25, item 1: what `make quickstart` prints last is where to look: the front's MLflow
    view (the model-training view) and the command that writes the HTML report."""
    tmp, job, res = launched
    last = res.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("front in MLflow: ") and "workflowType=machine_learning" in last[0], last
    assert "viewStateShareKey=raysweep-front-constrained" in last[0], last
    assert last[1] == f"report: raysweep report constrained --tracking-uri {job.sweep.tracking_uri}", last


# What a trial's run logs as metrics (README, "The front in MLflow": "Runs"): charts a person
# compares. Timings are its timings.json; counters and marks are tags.
DOCUMENTED_METRIC = re.compile(r"^((train|before|eval|final|objective|front)/.+|feasible|retention_constraint)$")
NOT_CHARTS = re.compile(r"^(startup/|eval_seconds/|pareto/|train/(step|start_step|total_steps)$|step_seconds_median$)")


def test_a_trials_run_logs_only_the_documented_metrics_each_at_its_step(launched):
    """Issue 25, item 4: no startup timings, counters or step-0 copies of the final evaluation."""
    from raysweep.sweep import tracking

    tmp, job, _ = launched
    uri = job.sweep.tracking_uri
    c = tracking.client(uri)
    runs = tracking.child_runs(c, tracking.find_parent(c, "constrained", uri))
    assert len(runs) == 3
    for run in runs:
        keys = set(run.data.metrics)
        assert keys and all(DOCUMENTED_METRIC.match(k) for k in keys), sorted(k for k in keys if not DOCUMENTED_METRIC.match(k))
        assert not [k for k in keys if NOT_CHARTS.match(k)]
        if run.info.status != "FINISHED":
            continue
        last = job.unlearn.steps
        for key in [k for k in keys if k.startswith(("final/", "objective/"))] + ["feasible"]:
            assert {m.step for m in c.get_metric_history(run.info.run_id, key)} == {last}, key
        assert run.data.tags["raysweep.final_step"] == str(last)
        timings = json.loads(Path(c.download_artifacts(run.info.run_id, "timings.json")).read_text())
        assert timings["startup/build"] >= 0 and timings["trial_seconds"] > 0
        config = json.loads(run.data.tags["raysweep.config"])  # the sampler's names: a tag, not params too
        assert "method.graddiff.alpha" in config and set(run.data.params) == {"alpha", "lr"}


# Lines that come with time, not with events: a trial's progress (every 10 s) and the sweep's
# summary (every 30 s). How many there are depends on the machine's speed, so the bound leaves them out.
PERIODIC_LINE = re.compile(r"^\[[^]]*\] (trial (\d+/\d+ )?\S+ step \d|sweep \S+: )")
# The start (prepare, target, sweep lines), per trial its start and its result, the final summary,
# the Pareto table (title, header, rule, <= 3 rows, hypervolume, plot), the front link and the
# report command: 3 + 6 + 1 + 8 + 2. The
# pre-rework console printed about 70 lines per trial.
CONSOLE_EVENT_LINE_BOUND = 20


def test_console_is_one_line_per_trial_event(launched):
    tmp, job, res = launched
    lines = (res.stdout + res.stderr).strip().splitlines()
    events = [l for l in lines if not PERIODIC_LINE.match(l)]
    assert len(events) <= CONSOLE_EVENT_LINE_BOUND, "\n".join(lines)
    noise = [l for l in lines if "Reporting training result" in l or "PlacementGroupCleaner" in l
             or "Traceback" in l or "INFO" in l]
    assert not noise, noise
    started = [l for l in lines if " started: " in l]
    ended = [l for l in lines if " finished in " in l or " stopped early " in l]
    assert len(started) == 3 and len(ended) == 3
    for l in ended:  # each trial's objectives on its end line
        assert "forget_answer_loss=" in l and "retain_answer_loss=" in l
    for l in started:  # each trial's configuration on its start line
        assert "graddiff(alpha=" in l and "lr=" in l
    assert any(l.split("] ", 1)[-1].startswith("sweep constrained finished: 3/3 done") for l in lines)
    assert "Pareto front of sweep constrained" in res.stdout


def test_constrained_sweep_never_reports_an_infeasible_trial_on_its_front(finished_sweep):
    tmp, job, report = finished_sweep
    assert report["n_finished"] == 3
    assert report["front"], "some trial must be feasible"
    assert all(r["feasible"] for r in report["front"])
    infeasible = [r for r in report["trials"] if not r["feasible"]]
    # The constraint is real: a large lr breaks retention, and such trials never reach the front.
    assert infeasible, "the space must produce infeasible trials for this check to mean something"
    assert not any(r["pareto"] for r in infeasible)


def test_optuna_saw_the_constraint(finished_sweep):
    from mlflow.tracking import MlflowClient

    tmp, job, report = finished_sweep
    c = MlflowClient(job.sweep.tracking_uri)
    children = [r for r in c.search_runs([c.get_experiment_by_name("raysweep/tiny-test").experiment_id])
                if r.data.tags.get("raysweep.role") != "parent"]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert "retention_constraint" in r.data.metrics and "feasible" in r.data.metrics
        assert any(k.startswith("train/") for k in r.data.metrics)  # per-step metrics
        assert r.data.tags["raysweep.checkpoint_uri"].startswith("runs:/")
    hist = c.get_metric_history(children[0].info.run_id, "train/cos_forget_retain")
    assert len(hist) == 3  # one value per step


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off", scheduler="fifo", event="uninterrupted", export="none")
def test_pareto_from_mlflow_alone_matches_the_sweep(finished_sweep):
    import ray

    tmp, job, report = finished_sweep
    assert not ray.is_initialized()
    res = raysweep("pareto", "constrained", "--tracking-uri", job.sweep.tracking_uri, "--json",
                   "--plot", str(tmp / "front.png"), cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.loads(res.stdout)
    assert {r["trial_id"] for r in again["front"]} == {r["trial_id"] for r in report["front"]}
    assert again["hypervolume"] == pytest.approx(report["hypervolume"])
    assert (tmp / "front.png").stat().st_size > 10_000
    table = raysweep("pareto", "constrained", "--tracking-uri", job.sweep.tracking_uri, "--no-log", cwd=tmp)
    assert "Pareto front of sweep constrained" in table.stdout and "hypervolume" in table.stdout
    status = raysweep("status", "constrained", "--tracking-uri", job.sweep.tracking_uri, cwd=tmp)
    assert "FINISHED: 3" in status.stdout


def test_pareto_errors_are_one_line(finished_sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    tmp, job, _ = finished_sweep
    uri = job.sweep.tracking_uri
    unknown = raysweep("pareto", "nope", "--tracking-uri", uri, cwd=tmp)
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines() == [
        f"raysweep: error: unknown sweep 'nope' at {uri} (known: constrained)"]

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("raysweep/tiny-test").experiment_id
    c.create_run(exp, tags={"raysweep.sweep": "empty", "raysweep.role": "parent", "raysweep.objectives": "{}"})
    empty = raysweep("pareto", "empty", "--tracking-uri", uri, cwd=tmp)
    assert empty.returncode != 0
    assert empty.stderr.strip().splitlines() == ["raysweep: error: sweep 'empty' has no finished trials yet"]

    dead = raysweep("pareto", "constrained", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp)
    lines = dead.stderr.strip().splitlines()
    assert dead.returncode != 0 and len(lines) == 1
    assert lines[0].startswith("raysweep: error: --tracking-uri: 'http://127.0.0.1:9' is not allowed "
                               "(no MLflow server answered within")


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off",
                    eval_every="off", scheduler="fifo", event="uninterrupted", export="final")
def test_a_front_trial_exports_from_its_mlflow_artifact_checkpoint(finished_sweep, tmp_path, capsys):
    """Without eval.every the trial's one point is its last; its checkpoint lives in MLflow
    (sweep.checkpoint: artifact). The export loads and scores what the sweep recorded."""
    from transformers import AutoModelForCausalLM

    from raysweep.cli import main

    tmp, job, report = finished_sweep
    point = report["front"][0]
    out = tmp_path / "front_model"
    assert main(["export", "constrained", point["trial_id"], str(out), "--tracking-uri", job.sweep.tracking_uri]) == 0
    AutoModelForCausalLM.from_pretrained(out)
    assert main(["eval", str(out), "--job", str(job.source), "--benchmark", "qa", "--out", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    again = again.get("metrics", again)
    for k, v in point["objectives"].items():
        assert again[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
