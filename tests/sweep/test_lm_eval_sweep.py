"""``eval.benchmarks: [lm_eval]`` in a real sweep (issue 24): `raysweep launch` of a quickstart-style
job on local Ray with sqlite MLflow, one trial, lm-eval's accuracy on a local task as the sweep's
objectives; it reaches the trial's MLflow run as final and objective metrics."""

import yaml

from ..conftest import SHARED_DATA, tiny_job
from .test_sweep import raysweep

OBJECTIVES = {"lm_eval/raysweep_wmdp_bio/acc_sub8": "min", "lm_eval/raysweep_mmlu/acc_sub8": "max"}


def test_lm_eval_accuracy_is_a_sweep_objective_in_mlflow(tmp_path, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job
    from raysweep.sweep import tracking

    path = tiny_job(tmp_path, tofu_dir, shared_cache, steps=2, batch_size=4)
    job = yaml.safe_load(path.read_text())
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"unlearn": {"lr": {"loguniform": [1e-3, 1e-2]}}}))
    job["eval"] = {"benchmarks": ["lm_eval"], "mcq_data": str(SHARED_DATA), "batch_size": 16,
                   "lm_eval": {"tasks": ["raysweep_wmdp_bio", "raysweep_mmlu"], "limit": 8}}
    job["sweep"] = {"search_space": str(space), "objectives": OBJECTIVES, "sampler": "random", "num_trials": 1,
                    "max_concurrent": 1, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "storage_path": str(tmp_path / "runs")}
    path.write_text(yaml.safe_dump(job))
    prepare(load_job(path))  # the session's shared target
    res = raysweep("launch", str(path), "--name", "lmeval", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    c = tracking.client(job["sweep"]["tracking_uri"])
    exp = c.get_experiment_by_name("raysweep/tiny-test")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get(tracking.ROLE_TAG) != "parent"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    for name in OBJECTIVES:
        assert metrics[f"final/{name}"] in {k / 8 for k in range(9)}, metrics  # 8 questions
        assert metrics[f"objective/{name}"] == metrics[f"final/{name}"]
    assert metrics["final/lm_eval/raysweep_mmlu/acc_stderr_sub8"] >= 0
