"""The kinds of run, in full (issue 21, docs/matrix.md "Kinds of run"): for each strategy, a sweep
in which the first trial's worker is killed mid-trial and recovers from its checkpoint, then the
driver is killed while that trial closes and the sweep is resumed; a final and a mid-run point of
the trial that lived through both faults and of one that ran uninterrupted are exported, load with
``from_pretrained`` and reproduce their recorded metrics. Real local Ray (Ray Train with 2 gloo
ranks for ddp and fsdp), Optuna, sqlite MLflow.

The kill moments are held, not raced: the worker dies at a fixed step (RAYSWEEP_FAULT_KILL_AT_STEP),
and the trial then waits between logging its results and closing its run
(RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S) while the test kills the driver."""

import pytest
import yaml

from ..conftest import tiny_job
from ..sweep.test_trajectory import OBJECTIVES
from ..driver_faults import child_runs, export_and_evaluate, launch_kill_resume

pytestmark = pytest.mark.slow
BASE = dict(precision="fp32", lora="off", gradient_checkpointing="off", eval_every="on", scheduler="fifo",
            method="graddiff")
STRATEGY = {"inline": {"workers": 1}, "ddp": {"workers": 2, "strategy": "ddp", "cpus_per_worker": 0.5},
            "fsdp": {"workers": 2, "strategy": "fsdp", "cpus_per_worker": 0.5}}


def _job(tmp_path, tofu_dir, cache, strategy):
    job = yaml.safe_load(tiny_job(tmp_path, tofu_dir, cache, steps=4, batch_size=4, lr=1e-2).read_text())
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method": {"graddiff": {"alpha": {"uniform": [0.5, 1.5]}}}}))
    job["train"] = {**STRATEGY[strategy], "max_failures": 1, "checkpoint_every": 1}
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 4, "max_new_tokens": 4, "every": 2}
    job["sweep"] = {"search_space": str(space), "objectives": OBJECTIVES, "sampler": "random", "num_trials": 3,
                    "max_concurrent": 1, "seed": 0, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "storage_path": str(tmp_path / "runs")}
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path, job["sweep"]["tracking_uri"]


def _cells(strategy):
    return [pytest.mark.matrix(strategy=strategy, **BASE, event=e, export=x)
            for e in ("uninterrupted", "worker_killed", "driver_killed_resume") for x in ("none", "final", "mid_run")]


@pytest.mark.parametrize("strategy", [pytest.param(s, marks=_cells(s)) for s in STRATEGY])
def test_worker_and_driver_killed_then_every_kind_of_point_exports(tmp_path, tofu_dir, shared_cache, strategy):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    path, uri = _job(tmp_path, tofu_dir, shared_cache, strategy)
    prepare(load_job(path))
    name = f"kinds-{strategy}"
    marker = launch_kill_resume(tmp_path, path, uri, name, kill_at_step=3)
    assert marker.exists(), "the first trial's worker must really have died"
    runs = child_runs(uri)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    c = tracking.client(uri)
    by_trial = {r.data.tags[tracking.TRIAL_TAG]: r for r in runs}
    restarted = [t for t, r in by_trial.items()
                 if max((m.value for m in c.get_metric_history(r.info.run_id, "train/start_step")), default=0) > 0]
    assert restarted, "the killed worker's trial went on from a checkpoint, not from scratch"
    report = pareto_report(c, uri, name)
    points = {(r["trial_id"], r["step"]): r for r in report["trials"]}
    faulted = restarted[0]  # killed worker, then in flight when the driver died
    calm = next(t for t in by_trial if t != faulted)
    for trial, label in ((faulted, "faulted"), (calm, "calm")):
        for step, kind in ((4, "final"), (2, "mid")):
            export_and_evaluate(tmp_path, path, uri, name, points[(trial, step)], f"{label}_{kind}", rel=1e-4, abs=1e-6)
