"""A finished sweep's MLflow layout written by hand through raysweep's own tracking calls (real
sqlite MLflow, no Ray): fast enough for the default suite, with known answers - which points are
on the front, which step of which trial, which trial is infeasible."""

import json

import yaml

from raysweep.sweep import tracking
from raysweep.sweep.space import SearchSpace
from raysweep.sweep.storage_trust import MAC_TAG, STORAGE_TAG, sign
from raysweep.sweep.tracking import checkpoint_tag

OBJECTIVES = {"forget_rougeL_recall": "min", "retain_rougeL_recall": "max"}
SPACE = {"method": {"graddiff": {"alpha": {"loguniform": [0.3, 3.0]}}, "sago": {"alpha": {"loguniform": [0.1, 2.0]}},
                    "ngdiff": {}},
         "forget": {"ga": {}, "npo": {"beta": {"loguniform": [0.05, 1.0]}}},
         "unlearn": {"lr": {"loguniform": [1e-4, 2e-3]}}}

# trial -> (method, forget, {param: value}, {step: (forget, retain)}, feasible). The last step is
# the final evaluation. Front: t1 (final), t2 at step 2 (its final point is dominated), t4 (final).
TRIALS = {
    "t1": ("sago", "npo", {"method.sago.alpha": 0.5, "forget.npo.beta": 0.2}, {2: (0.6, 0.50), 4: (0.30, 0.70)}, True),
    "t2": ("graddiff", "ga", {"method.graddiff.alpha": 1.5}, {2: (0.20, 0.60), 4: (0.25, 0.55)}, True),
    "t3": ("graddiff", "npo", {"method.graddiff.alpha": 0.4, "forget.npo.beta": 0.9}, {4: (0.50, 0.50)}, True),
    "t4": ("ngdiff", "ga", {}, {4: (0.10, 0.30)}, True),
    "t5": ("sago", "ga", {"method.sago.alpha": 1.2}, {4: (0.05, 0.95)}, False),  # best on both, but infeasible
}
FRONT = {("t1", 4), ("t2", 2), ("t4", 4)}


def make_sweep(tmp_path, name="made", tofu_dir=None, uri=None):
    """The layout `raysweep launch` leaves: a parent with job/space artifacts, one FINISHED child
    per trial with eval/* histories, objective/* finals and checkpoint tags; plus a FAILED trial.
    In a sqlite file under ``tmp_path`` unless ``uri`` names a tracking server."""
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp = c.create_experiment(f"raysweep/{name}", artifact_location=(tmp_path / "artifacts").as_uri())
    space = SearchSpace(SPACE, "space.yaml")
    parent = c.create_run(exp, run_name=name, tags={
        tracking.SWEEP_TAG: name, tracking.ROLE_TAG: "parent", "raysweep.objectives": json.dumps(OBJECTIVES),
        STORAGE_TAG: str(tmp_path / "runs"), MAC_TAG: sign(name, str(tmp_path / "runs")),
        "raysweep.reference_point": json.dumps({"forget_rougeL_recall": 1.0, "retain_rougeL_recall": 0.0}),
        "raysweep.constrained": "True", **tracking.objective_tags(OBJECTIVES)})
    pid = parent.info.run_id
    c.log_text(pid, yaml.safe_dump(SPACE), "search_space.yaml")
    c.log_text(pid, json.dumps(_job(tmp_path, tofu_dir)), "job.json")
    for tid, (method, forget, params, points, feasible) in TRIALS.items():
        config = {"method": method, "forget": forget, "unlearn.lr": 1e-3, **params}
        run = tracking.get_or_create_child(c, pid, exp, tid, name, space.flat_params(config),
                                           {"raysweep.method": method, "raysweep.forget": forget,
                                            tracking.CONFIG_TAG: json.dumps(config),
                                            **tracking.objective_tags(OBJECTIVES)})
        for step, (f, r) in points.items():
            tracking.log_metrics(c, run, {"eval/forget_rougeL_recall": f, "eval/retain_rougeL_recall": r,
                                          "eval/feasible": float(feasible)}, step=step)
            c.set_tag(run, checkpoint_tag(step), str(tmp_path / "runs" / tid / f"checkpoint_{step:06d}"))
        f, r = points[max(points)]
        tracking.log_metrics(c, run, {"objective/forget_rougeL_recall": f, "objective/retain_rougeL_recall": r,
                                      "feasible": float(feasible)})
        c.set_tag(run, "raysweep.checkpoint_uri", str(tmp_path / "runs" / tid / f"checkpoint_{max(points):06d}"))
        c.set_terminated(run, "FINISHED")
    failed = tracking.get_or_create_child(c, pid, exp, "t6", name, {"method": "sago"}, {"raysweep.method": "sago"})
    c.set_terminated(failed, "FAILED")
    c.set_terminated(pid, "FINISHED")
    return c, uri, parent


def _job(tmp_path, tofu_dir):
    """A valid job with a sweep section (logged models resolve each trial's job from it)."""
    from raysweep.spec import JobSpec

    from ..conftest import tiny_job

    raw = yaml.safe_load(tiny_job(tmp_path, tofu_dir or tmp_path).read_text())
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    raw["sweep"] = {"search_space": str(tmp_path / "space.yaml"), "objectives": OBJECTIVES, "num_trials": 5}
    return json.loads(JobSpec.model_validate(raw).model_dump_json())
