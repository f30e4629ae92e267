"""Sweeps of two-rank trials in the default suite (issue 21, docs/matrix.md): every pair of DDP and
FSDP with a scheduler, a fault and a kind of exported point, and of FIFO with each fault, runs here
in four small sweeps of one Ray Train trial each (2 gloo ranks, cpus_per_worker 0.5), real Optuna,
sqlite MLflow:

* MO-ASHA on DDP and on FSDP (bf16, gradient checkpointing), evaluation along the run: the trial
  passes the rung at step 2 and runs to its end; its mid-run point is exported. Both sweeps run in
  one driver, on one Ray, in the background while the two below run.
* FIFO on FSDP, no evaluation along the run: the trial's rank-1 worker is killed at step 3 and the
  trial goes on from its checkpoint; the driver is SIGKILLed while the trial is held before closing
  its run, and ``raysweep resume`` finishes it; its final point is exported.
* FIFO on DDP (bf16, LoRA, gradient checkpointing), no evaluation along the run: the same worker
  kill, driver kill and resume as above; its final point is exported.

Exported points load with ``from_pretrained`` and reproduce the metrics their trial recorded. The
kill moments are held by fault hooks (tests/driver_faults.py), never raced against the machine."""

import os
import subprocess
import sys

import psutil
import pytest
import yaml

from ..conftest import tiny_job
from ..driver_faults import child_runs, export_and_evaluate, kill_pids, launch_kill_resume
from .test_trajectory import OBJECTIVES

# sweep -> (its cell, method graddiff throughout; the events it lives through; the point exported)
SWEEPS = {
    "fsdp-fifo": (dict(strategy="fsdp", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="off",
                       scheduler="fifo"), ("worker_killed", "driver_killed_resume"), "final"),
    "ddp-fifo": (dict(strategy="ddp", precision="bf16", lora="on", gradient_checkpointing="on", eval_every="off",
                      scheduler="fifo"), ("worker_killed", "driver_killed_resume"), "final"),
    "ddp-asha": (dict(strategy="ddp", precision="fp32", lora="off", gradient_checkpointing="off", eval_every="on",
                      scheduler="mo_asha"), ("uninterrupted",), "mid_run"),
    "fsdp-asha": (dict(strategy="fsdp", precision="bf16", lora="off", gradient_checkpointing="on", eval_every="on",
                       scheduler="mo_asha"), ("uninterrupted",), "mid_run"),
}
CALM = [n for n, (_, events, _) in SWEEPS.items() if events == ("uninterrupted",)]
FAULTED = [n for n in SWEEPS if n not in CALM]
SPACE = {"method": {"graddiff": {"alpha": {"uniform": [0.5, 1.5]}}}}  # one trial per sweep
KILL_AT = 3  # after the step-2 checkpoint (every step is checkpointed), before the last step


def _job(tmp, tofu_dir, cache, name, **train):
    """The tiny job as a one-trial sweep of ``name``'s cell, its MLflow store and Tune storage in ``tmp``."""
    cell = SWEEPS[name][0]
    job = yaml.safe_load(tiny_job(tmp, tofu_dir, cache, steps=4, batch_size=4, lr=1e-2).read_text())
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    job["train"] = {"workers": 2, "cpus_per_worker": 0.5, "strategy": cell["strategy"], "precision": cell["precision"],
                    "gradient_checkpointing": cell["gradient_checkpointing"] == "on", **train}
    if cell["lora"] == "on":
        job["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 4, "max_new_tokens": 4,
                   "every": 2 if cell["eval_every"] == "on" else 0}
    job["sweep"] = {"search_space": str(tmp / "space.yaml"), "objectives": OBJECTIVES, "sampler": "random",
                    "num_trials": 1, "max_concurrent": 1, "seed": 0,
                    "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "storage_path": str(tmp / "runs"),
                    **({"scheduler": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2}}
                       if cell["scheduler"] == "mo_asha" else {})}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path, job["sweep"]["tracking_uri"]


def _prepared(path):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    prepare(load_job(path))  # the session's cached target (the same data, model and prepare settings)
    return path


def _report(uri, name):
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    return pareto_report(tracking.client(uri), uri, name)


def _params(names, export=None):
    """One case per sweep, marked with its cells (``export``: the kind of point the test exports,
    else none)."""
    return [pytest.param(n, id=n, marks=[pytest.mark.matrix(**SWEEPS[n][0], method="graddiff", event=e,
                                                            export=export or "none") for e in SWEEPS[n][1]])
            for n in names]


@pytest.fixture(scope="module", autouse=True)
def calm_driver(tmp_path_factory, tofu_dir, shared_cache):
    """The sweeps nothing interrupts, one after the other in one ``raysweep`` process (one Ray),
    started first and left to run while the faulted sweeps take their turns (either sweep leaves
    the machine idle for a good part of its time, waiting on processes to start)."""
    tmp = tmp_path_factory.mktemp("ranks_calm")
    paths = [_job(tmp, tofu_dir, shared_cache, n)[0] for n in CALM]
    _prepared(paths[0])  # the session's cached target (the same data, model and prepare settings)
    script = ("import sys\nfrom raysweep.cli import main\n"
              "sys.exit(any(main(['launch', p, '--name', n]) for p, n in zip(sys.argv[1::2], sys.argv[2::2])))")
    with open(tmp / "calm.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script, *[str(a) for p, n in zip(paths, CALM) for a in (p, n)]],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""}, cwd=tmp)
    yield tmp, paths, proc
    if proc.poll() is None:  # a test failed before the sweeps were waited for: stop them and their Ray
        try:
            kill_pids([p.pid for p in psutil.Process(proc.pid).children(recursive=True)] + [proc.pid])
        except psutil.NoSuchProcess:  # it ended meanwhile, and its Ray with it
            pass


@pytest.fixture(scope="module")
def calm(calm_driver):
    tmp, paths, proc = calm_driver
    assert proc.wait(timeout=900) == 0, (tmp / "calm.log").read_text()[-4000:]
    return {n: (tmp, p) for n, p in zip(CALM, paths)}


@pytest.fixture(scope="module")
def swept(request, tmp_path_factory, tofu_dir, shared_cache):
    """(name, folder, job path, tracking URI) of the sweep ``request.param``, run to its end."""
    name = request.param
    if name in CALM:
        tmp, path = request.getfixturevalue("calm")[name]
    else:
        tmp = tmp_path_factory.mktemp(f"ranks_{name}")
        path, _ = _job(tmp, tofu_dir, shared_cache, name, max_failures=1, checkpoint_every=1)
        kill_at = KILL_AT if "worker_killed" in SWEEPS[name][1] else None
        launch_kill_resume(tmp, _prepared(path), f"sqlite:///{tmp / 'mlflow.db'}", name, kill_at_step=kill_at)
    return name, tmp, path, f"sqlite:///{tmp / 'mlflow.db'}"


@pytest.mark.parametrize("swept", _params(FAULTED), indirect=True)
def test_the_trial_goes_on_from_its_checkpoint_and_the_resumed_sweep_finishes_it(swept):
    from raysweep.sweep import tracking

    name, tmp, path, uri = swept
    c = tracking.client(uri)
    worker_killed = "worker_killed" in SWEEPS[name][1]
    assert (tmp / "worker_killed").exists() == worker_killed  # that worker really died, and only there
    (run,) = child_runs(uri)
    assert run.info.status == "FINISHED" and "objective/forget_answer_loss" in run.data.metrics, run.info.status
    history = {k: c.get_metric_history(run.info.run_id, k) for k in ("train/loss_forget", "objective/forget_answer_loss")}
    if worker_killed:  # the new worker group went on from a checkpoint, not from scratch
        assert int(run.data.tags.get("raysweep.resumed_from_step", 0)) > 0, run.data.tags
    # The trial closed its results before the driver died (held there), and again in the resumed
    # sweep, which went on from its last checkpoint: no step ran twice from the start.
    assert len(history["objective/forget_answer_loss"]) == 2, history["objective/forget_answer_loss"]
    assert [m.step for m in history["train/loss_forget"]].count(1) == 1, history["train/loss_forget"]
    assert tracking.find_parent(c, name, uri).info.status == "FINISHED"


@pytest.mark.parametrize("swept", _params(CALM), indirect=True)
def test_the_trial_passes_mo_ashas_rung_and_runs_on_to_its_end(swept):
    from raysweep.sweep import tracking

    name, tmp, path, uri = swept
    c = tracking.client(uri)
    (run,) = tracking.child_runs(c, tracking.find_parent(c, name, uri))
    # evaluated at the rung (step 2: grace_period) and at its end; the first trial at a rung goes on
    assert [m.step for m in c.get_metric_history(run.info.run_id, "eval/forget_answer_loss")] == [2, 4]
    assert run.info.status == "FINISHED" and "raysweep.stopped_by" not in run.data.tags
    assert run.data.metrics["objective/forget_answer_loss"] == run.data.metrics["final/forget_answer_loss"]


@pytest.mark.parametrize("swept", [p for n in SWEEPS for p in _params([n], SWEEPS[n][2])], indirect=True)
def test_the_exported_point_loads_and_reproduces_its_metrics(swept):
    name, tmp, path, uri = swept
    cell, _, export = SWEEPS[name]
    trials = _report(uri, name)["trials"]
    point = next(r for r in trials if r["final"] == (export == "final"))
    assert point["step"] == (4 if export == "final" else 2), trials
    # a bf16 trial evaluated under autocast, raysweep eval in the exported fp32 weights
    tolerance = dict(rel=2e-2) if cell["precision"] == "bf16" else dict(rel=1e-4, abs=1e-6)
    export_and_evaluate(tmp, path, uri, name, point, f"{name}_{export}", **tolerance)
