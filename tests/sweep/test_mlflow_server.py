"""Our MLflow layout against a real `mlflow server` on loopback: a trial keeps one child run
across restarts, and `raysweep pareto` reads the front over HTTP."""

import json
import os
import subprocess
import sys

from raysweep.sweep import tracking


def test_tracking_layout_and_pareto_over_http(mlflow_server, tmp_path):
    c = tracking.client(mlflow_server)
    exp = tracking.experiment_id(c, "raysweep/http-test")
    parent = c.create_run(exp, tags={tracking.SWEEP_TAG: "http", tracking.ROLE_TAG: "parent",
                                     "raysweep.objectives": json.dumps({"forget": "min", "retain": "max"})})
    pid = parent.info.run_id
    points = {"t1": (0.2, 0.5), "t2": (0.5, 0.9), "t3": (0.6, 0.6), "t4": (0.1, 0.1)}  # t3 dominated by t2
    for tid, (f, r) in points.items():
        run = tracking.get_or_create_child(c, pid, exp, tid, "http", {"method": "sago", "unlearn.lr": 0.001},
                                           {"raysweep.method": "sago"})
        if tid == "t1":  # a restart of the same trial must reuse its run, not add a second one
            assert tracking.get_or_create_child(c, pid, exp, tid, "http", {}, {}) == run
        tracking.log_metrics(c, run, {"objective/forget": f, "objective/retain": r, "feasible": 1.0})
        c.set_terminated(run, "FINISHED")
    stale = tracking.get_or_create_child(c, pid, exp, "t5", "http", {}, {})
    assert len(tracking.child_runs(c, parent)) == 5
    assert tracking.close_stale_runs(c, parent, "interrupted") == 1
    assert c.get_run(stale).info.status == "KILLED"

    env = {**os.environ}
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "pareto", "http", "--tracking-uri", mlflow_server,
                          "--json", "--plot", str(tmp_path / "p.png")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert {r["trial_id"] for r in report["front"]} == {"t1", "t2", "t4"}
    assert report["n_finished"] == 4
    # the plot was logged to the parent run on the server
    assert any(a.path.endswith(".png") for a in c.list_artifacts(pid))
