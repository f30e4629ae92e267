"""Features together, the way a researcher combines them (issue 21, docs/matrix.md): one real sweep
of inline LoRA trials with every synthesis method, bf16 compute, gradient checkpointing,
evaluation along the run and MO-ASHA, in which every trial's worker is killed after its first step
and recovers from its checkpoint, and the driver is killed while the first trial to finish closes,
then the sweep resumed; then the mid-run point of every method and a final point exported (merged)
and evaluated again. Real local Ray, Optuna, sqlite MLflow, peft."""

from pathlib import Path

import pytest
import yaml

from ..conftest import tiny_job
from ..driver_faults import export_and_evaluate, launch_kill_resume
from ..matrix import AXES

METHODS = sorted(AXES["method"])
OBJECTIVES = {"forget_answer_loss": "max", "retain_answer_loss": "min"}
CELL = dict(strategy="inline", precision="bf16", lora="on", gradient_checkpointing="on", eval_every="on",
            scheduler="mo_asha")
KILL_AT = 1  # after each trial's step-1 checkpoint, before MO-ASHA's rung at step 2 can stop it


def cells(export):
    """Every trial of this sweep lost a worker, and the sweep lived through its driver's death."""
    def mark(test):
        for event in ("worker_killed", "driver_killed_resume"):
            test = pytest.mark.matrix(**CELL, event=event, export=export)(test)
        return test
    return mark


@pytest.fixture(scope="module")
def combined(tmp_path_factory, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking
    from raysweep.sweep.report import pareto_report

    tmp = tmp_path_factory.mktemp("matrix")
    job = yaml.safe_load(tiny_job(tmp, tofu_dir, shared_cache, steps=4, batch_size=4, lr=1e-2).read_text())
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"method": {m: {} for m in METHODS}}))
    job["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    job["train"] = {"precision": "bf16", "gradient_checkpointing": True, "max_failures": 1, "checkpoint_every": 1}
    job["eval"] = {"benchmarks": ["qa"], "max_questions": 4, "max_new_tokens": 4, "every": 2}
    job["sweep"] = {"search_space": str(space), "objectives": OBJECTIVES, "sampler": "random", "num_trials": len(METHODS),
                    # Optuna's first 7 random draws under seed 140 are the 7 methods, each once
                    "max_concurrent": 2, "seed": 140, "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                    "storage_path": str(tmp / "runs"),
                    "scheduler": {"name": "mo_asha", "grace_period": 2, "reduction_factor": 2}}
    path = tmp / "matrix.yaml"
    path.write_text(yaml.safe_dump(job))
    prepare(load_job(path))
    uri = job["sweep"]["tracking_uri"]
    # the driver is killed while the first trial to finish is held before closing its run
    marker = launch_kill_resume(tmp, path, uri, "matrix", kill_at_step=KILL_AT, each_trial=True)
    c = tracking.client(uri)
    return tmp, path, uri, c, marker, pareto_report(c, uri, "matrix")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_with_bf16_checkpointing_evaluations_and_mo_asha(combined, method):
    tmp, path, uri, c, marker, report = combined
    rows = [r for r in report["trials"] if r["method"] == method]
    assert rows, f"{method}: no evaluated point"
    assert all(r["step"] in (2, 4) and r["checkpoint_uri"] for r in rows)
    for r in rows:
        assert all(v == v for v in r["objectives"].values()), r  # no NaN objective


@cells("none")
@pytest.mark.parametrize("method", METHODS)
def test_every_trials_worker_was_killed_and_it_went_on_from_its_checkpoint(combined, method):
    from raysweep.sweep import tracking

    tmp, path, uri, c, marker, report = combined
    parent = tracking.find_parent(c, "matrix", uri)
    run = next(r for r in tracking.child_runs(c, parent) if r.data.tags.get("raysweep.method") == method)
    trial = run.data.tags[tracking.TRIAL_TAG]
    assert Path(f"{marker}-{trial}").exists(), "the trial's worker must really have died"
    # went on from its step-1 checkpoint, not from scratch (a trial the driver's death caught later
    # went on from its latest one, which the tag then names)
    resumed = int(run.data.tags.get("raysweep.resumed_from_step", 0))
    assert resumed >= KILL_AT, run.data.tags


@cells("mid_run")
@cells("final")
def test_a_killed_trial_exports_its_final_and_mid_run_points(combined):
    tmp, path, uri, c, marker, report = combined
    final = next(r for r in report["trials"] if r["final"])
    mid = next(r for r in report["trials"] if r["trial_id"] == final["trial_id"] and r["step"] == 2)
    _export_and_evaluate(tmp, path, uri, mid, "killed_mid")
    _export_and_evaluate(tmp, path, uri, final, "killed_final")


def _export_and_evaluate(tmp, path, uri, point, name):
    # the trial evaluated under bf16 autocast, raysweep eval in the exported fp32 weights
    export_and_evaluate(tmp, path, uri, "matrix", point, name, rel=2e-2)


@cells("mid_run")
@pytest.mark.parametrize("method", METHODS)
def test_the_mid_run_point_of_every_method_exports_and_reproduces(combined, method):
    tmp, path, uri, c, marker, report = combined
    point = next(r for r in report["trials"] if r["method"] == method and r["step"] == 2)
    _export_and_evaluate(tmp, path, uri, point, f"{method}_mid")
