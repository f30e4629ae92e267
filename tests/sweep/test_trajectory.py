"""Search over the trajectory (issue 11): evaluations along the run as front candidates, MO-ASHA
stopping trials in a real sweep, export of a mid-run checkpoint, and warm starts - with a real
local Ray, a real Optuna study and sqlite MLflow."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from ..conftest import tiny_job
from .test_sweep import raysweep

# GA with a large learning rate raises both answer losses step after step. Minimising both makes
# an early checkpoint better than the trial's final one on both objectives - the situation where
# evaluating only the last checkpoint (open-unlearning #187) loses the best point of a trial.
OBJECTIVES = {"forget_answer_loss": "min", "retain_answer_loss": "min"}


def trajectory_job(tmp_path, tofu_dir, cache, *, name="trajectory", trials=3, scheduler=True, space=None):
    path = tiny_job(tmp_path, tofu_dir, cache, steps=6, batch_size=4)
    job = yaml.safe_load(path.read_text())
    space_path = tmp_path / f"space-{name}.yaml"
    space_path.write_text(yaml.safe_dump(space or {
        "method": {"graddiff": {"alpha": 0.0}},  # pure gradient ascent
        "unlearn": {"lr": {"loguniform": [2e-2, 5e-2]}},
    }))
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 6, "max_new_tokens": 8, "every": 2}
    job["sweep"] = {
        "search_space": str(space_path), "objectives": OBJECTIVES, "sampler": "random", "num_trials": trials,
        "max_concurrent": 1, "seed": 3, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "storage_path": str(tmp_path / "runs"),
        **({"scheduler": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2}} if scheduler else {}),
    }
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(job))
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp = tmp_path_factory.mktemp("trajectory")
    path = trajectory_job(tmp, tofu_dir, shared_cache)
    prepare(load_job(path))
    res = raysweep("launch", str(path), "--name", "traj", cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    job = load_job(path)
    uri = job.sweep.tracking_uri
    return tmp, path, job, res, pareto_report(tracking.client(uri), uri, "traj")


def _dominates(a: dict, b: dict) -> bool:
    better_or_equal = all(a[k] <= b[k] for k in OBJECTIVES)
    return better_or_equal and any(a[k] < b[k] for k in OBJECTIVES)


def test_every_evaluated_step_is_a_candidate_with_its_checkpoint(swept):
    tmp, path, job, res, report = swept
    rows = report["trials"]
    steps = {}
    for r in rows:
        steps.setdefault(r["trial_id"], []).append(r["step"])
        assert r["checkpoint_uri"], r  # every candidate can be exported
    finals = [r for r in rows if r["final"]]
    assert finals and all(r["step"] == 6 for r in finals)
    for r in finals:  # a trial that ran to the end was evaluated at 2, 4 and 6
        assert sorted(steps[r["trial_id"]]) == [2, 4, 6]


def test_a_mid_run_checkpoint_that_dominates_its_final_one_is_on_the_front_at_its_step(swept):
    tmp, path, job, res, report = swept
    by_trial = {}
    for r in report["trials"]:
        by_trial.setdefault(r["trial_id"], {})[r["step"]] = r
    cases = [(t, s) for t, pts in by_trial.items() if 6 in pts
             for s, r in pts.items() if s < 6 and _dominates(r["objectives"], pts[6]["objectives"])]
    assert cases, "GA at these learning rates must make an early checkpoint better than the last"
    front = {(r["trial_id"], r["step"]) for r in report["front"]}
    assert any(not r["final"] for r in report["front"]), front
    for t, s in cases:  # a final point dominated by its own trial's earlier one is never on the front
        assert (t, 6) not in front
    # The front is exactly the non-dominated set of all evaluated points.
    pts = np.array([[r["objectives"][k] for k in OBJECTIVES] for r in report["trials"]])
    for r, p in zip(report["trials"], pts):
        dominated = any(_dominates(dict(zip(OBJECTIVES, q)), r["objectives"]) for q in pts)
        assert r["pareto"] == (not dominated)
    table = raysweep("pareto", "traj", "--tracking-uri", job.sweep.tracking_uri, "--no-log", cwd=tmp)
    assert table.returncode == 0 and "step*" in table.stdout
    per_trial = raysweep("pareto", "traj", "--tracking-uri", job.sweep.tracking_uri, "--no-log", "--per-trial",
                         "--json", cwd=tmp)
    own = json.loads(per_trial.stdout)["per_trial"]
    for t, s in cases:
        assert 6 not in [r["step"] for r in own[t]]


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="on", scheduler="mo_asha", event="uninterrupted", export="mid_run")
def test_export_of_a_mid_run_point_reproduces_its_recorded_metrics(swept, tmp_path):
    from transformers import AutoModelForCausalLM

    tmp, path, job, res, report = swept
    point = next(r for r in report["front"] if not r["final"])
    out = tmp_path / "exported"
    ex = raysweep("export", "traj", f"{point['trial_id']}@{point['step']}", str(out),
                  "--tracking-uri", job.sweep.tracking_uri, cwd=tmp)
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()
    card = (out / "README.md").read_text()
    assert "graddiff" in card and "forget_answer_loss" in card and f"step {point['step']}" in card
    AutoModelForCausalLM.from_pretrained(out)  # loads as a plain HF model
    ev = raysweep("eval", str(out), "--job", str(path), "--benchmark", "qa", "--out", str(tmp_path / "e.json"), cwd=tmp)
    assert ev.returncode == 0, ev.stderr[-2000:]
    again = json.loads((tmp_path / "e.json").read_text())
    again = again.get("metrics", again)
    for k, v in point["objectives"].items():
        assert again[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    bad = raysweep("export", "traj", f"{point['trial_id']}@5", str(tmp_path / "x"), "--tracking-uri",
                   job.sweep.tracking_uri, cwd=tmp)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "no checkpoint at step 5" in bad.stderr


def test_mo_asha_stopped_trials_are_recorded_and_told_to_optuna_as_pruned(swept):
    from mlflow.tracking import MlflowClient

    tmp, path, job, res, report = swept
    c = MlflowClient(job.sweep.tracking_uri)
    exp = c.get_experiment_by_name("raysweep/tiny-test").experiment_id
    children = [r for r in c.search_runs([exp]) if r.data.tags.get("raysweep.role") != "parent"
                and r.data.tags.get("raysweep.sweep") == "traj"]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    stopped = [r for r in children if r.data.tags.get("raysweep.stopped_by") == "mo_asha"]
    study = _study(Path(job.sweep.storage_path) / "traj")
    states = sorted(t.state.name for t in study.trials)
    assert states.count("PRUNED") == len(stopped)
    for t in study.trials:
        if t.state.name == "PRUNED":
            assert set(t.user_attrs["last_values"]) == set(OBJECTIVES) and t.user_attrs["pruned_at_step"] in (2, 4)
    for r in stopped:
        assert "stopped by mo_asha" in r.data.tags["raysweep.status_reason"]
        assert not any(k.startswith("objective/") for k in r.data.metrics)  # never ran to the end
    assert ("stopped by the scheduler" in res.stdout + res.stderr) == bool(stopped)


def _study(storage: Path):
    """The Optuna study Tune saved with the sweep (its searcher state)."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(storage))
    return searcher._ot_study


def test_warm_start_seeds_the_study_with_the_earlier_trials(swept, tofu_dir, shared_cache):
    tmp, path, job, res, report = swept
    second = trajectory_job(tmp, tofu_dir, shared_cache, name="warm", trials=1, scheduler=False)
    raw = yaml.safe_load(second.read_text())
    raw["eval"].pop("every")
    second.write_text(yaml.safe_dump(raw))
    res2 = raysweep("launch", str(second), "--name", "warm", "--warm-start", "traj", cwd=tmp)
    assert res2.returncode == 0, res2.stderr[-3000:]
    study = _study(Path(job.sweep.storage_path) / "warm")
    earlier = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    finished = [r for r in report["trials"] if r["final"]]
    assert len(earlier) == len({r["run_id"] for r in finished}) >= 1
    for t in earlier:
        assert t.state.name == "COMPLETE" and len(t.values) == 2
    new = [t for t in study.trials if "warm_start_from" not in t.user_attrs]
    assert len(new) == 1
    assert all(new[0].params != t.params for t in earlier)  # the first new suggestion is not a repeat

    # A space the earlier trials do not fit is a one-line error, before anything starts.
    narrow = trajectory_job(tmp, tofu_dir, shared_cache, name="narrow", trials=1, scheduler=False,
                            space={"method": {"graddiff": {"alpha": 0.0}},
                                   "unlearn": {"lr": {"loguniform": [1e-5, 1e-4]}}})
    raw = yaml.safe_load(narrow.read_text())
    raw["eval"].pop("every")
    narrow.write_text(yaml.safe_dump(raw))
    bad = raysweep("launch", str(narrow), "--name", "narrow", "--warm-start", "traj", cwd=tmp)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "unlearn.lr=" in lines[0] and "is not allowed by the new search space" in lines[0]


@pytest.mark.parametrize("change, message", [
    ({"eval": {"every": 0}}, "sweep.scheduler: mo_asha is not allowed without eval.every"),
    ({"eval": {"every": 3}}, "sweep.scheduler.grace_period: 2 is not allowed (must be a multiple of eval.every=3)"),
    ({"eval": {"every": 2, "during_benchmarks": ["mmlu"]}}, "eval.during_benchmarks: ['mmlu'] is not allowed"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "reduction_factor": 1}}}, "reduction_factor"),
    ({"sweep": {"scheduler": {"name": "hyperband"}}}, "hyperband"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "promotion": "later"}}}, "sweep.scheduler.promotion"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "extrapolate": -1}}}, "sweep.scheduler.extrapolate"),
    ({"train": {"workers": 2}, "sweep": {"scheduler": {"name": "mo_asha", "grace_period": 2, "promotion": "pause"}}},
     "sweep.scheduler.promotion: 'pause' is not allowed with train.workers 2"),
    ({"train": {"workers": 2}, "sweep": {"scheduler": {"name": "mo_asha", "grace_period": 2,
                                                        "promotion": "synchronous"}}},
     "sweep.scheduler.promotion: 'synchronous' is not allowed with train.workers 2"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "rung_levels": [2, 3]}}},
     "sweep.scheduler.rung_levels: [2, 3] is not allowed (increasing steps, each a multiple of eval.every=2"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "rung_levels": [4, 2]}}}, "sweep.scheduler.rung_levels: [4, 2]"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "rung_levels": [2, 6]}}},
     "sweep.scheduler.rung_levels: [2, 6] is not allowed (increasing steps, each a multiple of eval.every=2 and "
     "below unlearn.steps=6)"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "stratify": "lr"}}},
     "sweep.scheduler.stratify: 'lr' is not allowed (Input should be 'method', 'forget' or 'retain')"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "promotion": "synchronous", "budget": 1.5}}},
     "sweep.scheduler.budget: 1.5 is not allowed (Input should be less than or equal to 1)"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "budget": 0.5}}},
     "sweep.scheduler.budget: 0.5 is not allowed with promotion 'stop' (synchronous only"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "tie_metrics": {"forget_answer_los": "max"}}}},
     "sweep.scheduler.tie_metrics: 'forget_answer_los' is not allowed (metrics of eval.benchmarks"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "tie_metrics": {"forget_answer_los": "max"}}}},
     "; did you mean 'forget_answer_loss'?"),
    ({"sweep": {"scheduler": {"name": "mo_asha", "tie_metrics": {"forget_answer_loss": "up"}}}},
     "sweep.scheduler.tie_metrics.forget_answer_loss: 'up' is not allowed"),
])
def test_trajectory_settings_are_validated_in_one_line(tmp_path, tofu_dir, change, message):
    from raysweep.spec import JobSpecError, load_job

    path = trajectory_job(tmp_path, tofu_dir, tmp_path / "cache")
    raw = yaml.safe_load(path.read_text())
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobSpecError) as err:
        load_job(path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="on", scheduler="mo_asha", event="uninterrupted", export="final")
def test_the_finished_sweep_marks_its_front_in_mlflow_with_loadable_models(swept, monkeypatch, tmp_path):
    """Issue 11 item 5 on a real sweep: the driver's end marks the front on the runs and logs the
    front's checkpoints as MLflow models that load and answer."""
    import mlflow

    from raysweep.sweep import tracking
    from raysweep.sweep.front_marks import front_filter
    from raysweep.sweep.report import point_label

    tmp, path, job, res, report = swept
    uri = job.sweep.tracking_uri
    c = tracking.client(uri)
    parent = tracking.find_parent(c, "traj", uri)
    kids = tracking.child_runs(c, parent)
    assert all(r.data.tags["mlflow.runName"] == f"graddiff-ga-trial-{r.data.tags['raysweep.trial_id']}" for r in kids)
    # the warm-start test adds a second sweep to the experiment: the filter keeps to this one
    front_runs = {r.info.run_id for r in c.search_runs([parent.info.experiment_id], filter_string=front_filter("traj"))}
    assert front_runs == {r["run_id"] for r in report["front"]}
    assert "Pareto front" in parent.data.tags["mlflow.note.content"]
    models = {m.tags["raysweep.point"]: m for m in c.search_logged_models([parent.info.experiment_id])
              if m.tags.get("raysweep.sweep") == "traj"}
    assert set(models) == {point_label(r) for r in report["front"]}
    first = next(iter(models.values()))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # Issue 23, finding 5: loading reads the checkpoint and the config/tokenizer saved with the
    # model, never prepare (which may fine-tune on a cache miss, or download).
    import raysweep.models.prepare as preparing

    def no_prepare(*args, **kwargs):
        raise AssertionError("loading a logged model called prepare")

    monkeypatch.setattr(preparing, "prepare", no_prepare)
    try:
        answers = mlflow.pyfunc.load_model(f"models:/{first.model_id}").predict(["Who wrote the book?"])
        files = Path(mlflow.artifacts.download_artifacts(f"models:/{first.model_id}", dst_path=str(tmp_path)))
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(answers) == 1 and isinstance(answers[0], str)
    import raysweep

    requirements = (files / "requirements.txt").read_text().split()
    assert f"raysweep=={raysweep.__version__}" in requirements and all("==" in r for r in requirements)
    assert (files / "artifacts" / "base" / "config.json").is_file()
    assert not list((files / "artifacts" / "base").glob("*.safetensors"))  # no second copy of the weights


def test_raysweep_report_of_the_finished_sweep_renders_in_chromium(swept):
    """Issue 11 item 6 on a real sweep: the report CLI from MLflow alone, opened in Chromium."""
    from raysweep.sweep.report import point_label

    from ..browser import dump_dom, not_blank, screenshot

    tmp, path, job, res, report = swept
    out = raysweep("report", "traj", "--tracking-uri", job.sweep.tracking_uri, "--out", str(tmp / "report"), cwd=tmp)
    assert out.returncode == 0, out.stderr[-2000:]
    url = (tmp / "report" / "report.html").as_uri()
    not_blank(screenshot(url, tmp / "report.png", size=(1280, 2400)))
    dom = dump_dom(url, tmp / "chromium-profile")
    table = dom[dom.index('id="front-table"'):]
    for r in report["front"]:
        assert f">{point_label(r)}</text>" in dom and f"<td>{point_label(r)}</td>" in table


# ---- evaluating along the run does not change the run (issue 21, item 9) ---------------------
EVAL_EVERY = (0, 4, 8)
TIMINGS = {"step_seconds", "step_seconds_median", "steps_timed", "unlearn_seconds"}


def dropout_job(tmp_path, tofu_dir, cache):
    """8 steps of a LoRA model with adapter dropout: every training forward draws from torch's global
    generator, so an evaluation that drew from it, or left the model in eval mode, would change the
    masks of the steps after it, and so their losses."""
    path = tiny_job(tmp_path, tofu_dir, cache, steps=8)
    job = yaml.safe_load(path.read_text())
    job["model"]["lora"] = {"r": 4, "dropout": 0.2}
    job["eval"]["benchmarks"] = ["qa"]
    path.write_text(yaml.safe_dump(job))
    return path


def training_steps(rows: list[dict]) -> list[dict]:
    """The engine's per-step metrics (losses, norms, lr), without timings and evaluation results."""
    return [{k: v for k, v in row.items() if "/" not in k and k not in TIMINGS} for row in rows]


@pytest.fixture
def evaluation_drawing_random_numbers(monkeypatch):
    """The evaluation also draws from every global generator, as a sampled generation or a random
    subsample of the questions would; the greedy evaluation of today draws nothing."""
    import random

    import torch

    from raysweep.evaluation import qa

    scored = qa.qa_metrics

    def drawing_qa_metrics(*args, **kwargs):
        torch.rand(1), random.random(), np.random.rand()
        return scored(*args, **kwargs)

    monkeypatch.setattr(qa, "qa_metrics", drawing_qa_metrics)


def test_evaluating_along_the_run_leaves_every_training_step_bit_identical(tmp_path, tofu_dir, shared_cache,
                                                                          evaluation_drawing_random_numbers):
    import random

    from raysweep.distributed.single import run_trial
    from raysweep.spec import load_job

    path = dropout_job(tmp_path, tofu_dir, shared_cache)
    steps, points, generators_kept = {}, {}, {}
    for every in EVAL_EVERY:
        before = random.getstate(), np.random.get_state()[1].copy()
        out = run_trial(load_job(path, {"eval.every": every}), progress=False, evaluate_before=False)
        steps[every], points[every] = training_steps(out["history"]), [p["step"] for p in out["trajectory"]]
        generators_kept[every] = random.getstate() == before[0] and bool((np.random.get_state()[1] == before[1]).all())
    assert points == {0: [], 4: [4, 8], 8: [8]}
    assert len(steps[0]) == 8
    assert steps[4] == steps[0]
    assert steps[8] == steps[0]
    # Training never draws from Python's or NumPy's generator (the first run pays the imports that
    # may): after it, only the evaluations could.
    assert generators_kept[4] and generators_kept[8]


def test_g_effect_diagnostics_leave_every_training_step_bit_identical(tmp_path, tofu_dir, shared_cache):
    """``eval.geffect_every`` runs extra forward and backward passes between steps, in train mode, so
    with dropout they draw from torch's generator like a training step does."""
    from raysweep.distributed.single import run_trial
    from raysweep.spec import load_job

    path = dropout_job(tmp_path, tofu_dir, shared_cache)
    history = {every: run_trial(load_job(path, {"eval.geffect_every": every}), progress=False,
                                evaluate_before=False)["history"] for every in (0, 2)}
    assert [int(m["step"]) for m in history[2] if "geffect_forget/total" in m] == [1, 3, 5, 7]
    assert training_steps(history[2]) == training_steps(history[0])


@pytest.mark.slow
def test_evaluating_along_the_run_leaves_two_ranks_training_steps_bit_identical(tmp_path, tofu_dir, shared_cache):
    """The same on two data-parallel ranks (gloo, the loop every Ray Train rank runs), where each
    rank scores its own share of the evaluation rows and the ranks gather the results."""
    from raysweep.distributed.local import run_ranks
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    from ..distributed import workers

    path = dropout_job(tmp_path, tofu_dir, shared_cache)
    prepare(load_job(path))  # once, before the ranks start
    runs = [(f"every{every}", {"eval.every": every}, {"save_checkpoints": False}) for every in EVAL_EVERY]
    ranks = run_ranks(workers.unlearn_many, 2, str(path), runs, str(tmp_path / "ranks"))
    for rank in ranks:
        steps = {tag: training_steps([metrics for metrics, _ in rows]) for tag, rows in rank.items()}
        evaluated = {tag: [m["step"] for m, _ in rows if any(k.startswith("eval/") for k in m)]
                     for tag, rows in rank.items()}
        assert evaluated == {"every0": [], "every4": [4.0, 8.0], "every8": [8.0]}
        assert len(steps["every0"]) == 8
        assert steps["every4"] == steps["every0"]
        assert steps["every8"] == steps["every0"]


@pytest.mark.slow
def test_sweeps_evaluated_every_4_or_8_steps_train_the_same_trials_and_share_their_points(tmp_path, tofu_dir,
                                                                                          shared_cache):
    """BENCHMARKS.md's search-efficiency runs at the sweep level: two FIFO sweeps with the same seed,
    ``eval.every`` (and checkpoint_every) 4 and 8, draw the same configurations, train them
    bit-identically, and every point evaluated every 8 steps is an every-4 point with the same value
    (so the every-4 hypervolume can only be larger or equal)."""
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking

    trials = {}
    for every in (4, 8):
        name = f"every{every}"
        path = trajectory_job(tmp_path, tofu_dir, shared_cache, name=name, trials=3, scheduler=False)
        job = yaml.safe_load(path.read_text())
        job["unlearn"]["steps"] = 8
        job["eval"]["every"] = every
        job["train"] = {"checkpoint_every": every}
        path.write_text(yaml.safe_dump(job))
        prepare(load_job(path))
        res = raysweep("launch", str(path), "--name", name, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        uri = job["sweep"]["tracking_uri"]
        c = tracking.client(uri)
        trials[every] = {json.dumps(r.data.params, sort_keys=True): r.info.run_id
                         for r in tracking.child_runs(c, tracking.find_parent(c, name, uri))}

    def history(run_id, metric):
        return {m.step: m.value for m in c.get_metric_history(run_id, metric)}

    assert len(trials[8]) == 3 and sorted(trials[4]) == sorted(trials[8]), "the same configurations"
    for config, every8 in trials[8].items():
        every4 = trials[4][config]
        for metric in ("train/loss_forget", "train/loss_retain_0"):
            assert history(every4, metric) == history(every8, metric), (config, metric)
        for metric in OBJECTIVES:
            points8 = history(every8, f"eval/{metric}")
            assert sorted(points8) == [8] and points8.items() <= history(every4, f"eval/{metric}").items()
