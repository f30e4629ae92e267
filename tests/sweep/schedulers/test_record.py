"""What the driver records when MO-ASHA stops a trial (``sweep/schedulers/record.py``), on a real
sqlite MLflow: the run ends FINISHED with the reason, and the point it was stopped at stays a
front candidate with its checkpoint even when the trial's own record of it was lost (the trial
is stopped inside ``tune.report``, before its MLflow call)."""

from types import SimpleNamespace

import pytest
import yaml

from raysweep.spec import load_job
from raysweep.sweep import tracking
from raysweep.sweep.schedulers.mo_asha import MOASHARungs
from raysweep.sweep.schedulers.record import stopped_trial_callback
from raysweep.sweep.tracking import checkpoint_tag

from ...conftest import tiny_job


@pytest.mark.parametrize("mode", ["artifact", "uri"])
def test_a_stopped_trials_point_is_recorded_by_the_driver_when_the_trial_could_not(tmp_path, tofu_dir, mode):
    raw = yaml.safe_load(tiny_job(tmp_path, tofu_dir).read_text())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"method": {"graddiff": {}}}))
    raw["sweep"] = {"search_space": str(tmp_path / "space.yaml"), "objectives": {"forget_answer_loss": "max"},
                    "checkpoint": mode}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    job = load_job(tmp_path / "job.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c, "raysweep/stopped")
    parent = c.create_run(exp, tags={tracking.SWEEP_TAG: "s", tracking.ROLE_TAG: "parent"})
    run_id = tracking.get_or_create_child(c, parent.info.run_id, exp, "t1", "s", {}, {})
    persisted = tmp_path / "runs" / "t1" / "checkpoint_000001"  # what Tune persisted with the step-2 report
    persisted.mkdir(parents=True)
    (persisted / "model.safetensors").write_bytes(b"weights")
    (persisted / "meta.json").write_text("{}")
    rungs = MOASHARungs({"forget_answer_loss": "max"}, max_steps=4, grace_period=2)
    rungs.stopped["t1"] = 2
    trial = SimpleNamespace(trial_id="t1", checkpoint=SimpleNamespace(path=str(persisted)),
                            last_result={"step": 2.0, "eval/forget_answer_loss": 5.5})
    stopped_trial_callback(uri, parent.info.run_id, exp, rungs, job).on_trial_complete(3, [trial], trial)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["raysweep.stopped_by"] == "mo_asha"
    recorded = run.data.tags[checkpoint_tag(2)]
    if mode == "uri":
        assert recorded == str(persisted)
    else:
        assert recorded == f"runs:/{run_id}/checkpoints/step_000002"
        files = sorted(f.path for f in c.list_artifacts(run_id, "checkpoints/step_000002"))
        assert files == ["checkpoints/step_000002/meta.json", "checkpoints/step_000002/model.safetensors"]
    # a point the trial did record is left as it is
    c.set_tag(run_id, checkpoint_tag(2), "runs:/elsewhere")
    stopped_trial_callback(uri, parent.info.run_id, exp, rungs, job).on_trial_complete(3, [trial], trial)
    assert c.get_run(run_id).data.tags[checkpoint_tag(2)] == "runs:/elsewhere"
