"""Sweep resume after the driver is SIGKILLed, and a sweep on a two-node Ray cluster with an
`mlflow server` on loopback. Slow: several minutes of real Ray Tune + Ray Train."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ..driver_faults import child_runs, kill_pids, start_driver, wait_until
from ..sweep.test_sweep import constrained_job

pytestmark = pytest.mark.slow


def sweep_job(tmp_path, tofu_dir, cache, n_trials, steps, tracking_uri=None, cpus_per_worker=1):
    path = constrained_job(tmp_path, tofu_dir, cache, n_trials=n_trials)
    job = yaml.safe_load(path.read_text())
    job["unlearn"]["steps"] = steps
    job["train"] = {"checkpoint_every": 5, "cpus_per_worker": cpus_per_worker}
    job["sweep"].pop("constraint")
    if tracking_uri:
        job["sweep"]["tracking_uri"] = tracking_uri
    path.write_text(yaml.safe_dump(job))
    return path, job


# Every launched trial is held this long at its first checkpoint (the fault hook in
# raysweep/sweep/trial.py): a mid-point that includes a running trial lasts at least this long,
# however fast the machine trains (a whole 6-trial sweep once took 13 s), and the kill lands mid-trial.
HOLD_AT_FIRST_CHECKPOINT_S = 20


def kill_and_resume(tmp_path, path, uri, name, n_trials, mid_point=None):
    """Launch, SIGKILL the driver once ``mid_point(runs)`` holds (default: 2 trials finished and
    one running), resume; returns the child runs before the kill and after the resume."""
    env = {**os.environ, "RAY_ADDRESS": "",
           "RAYSWEEP_FAULT_PAUSE_AFTER_FIRST_CHECKPOINT_S": str(HOLD_AT_FIRST_CHECKPOINT_S)}
    mid_point = mid_point or (lambda runs: len([r for r in runs if r.info.status == "FINISHED"]) >= 2
                              and any(r.info.status == "RUNNING" for r in runs))
    driver = start_driver(tmp_path, path, name, uri, env)
    started: set = set()
    try:
        wait_until(mid_point, "a mid-point", tmp_path, driver, uri, started)
        before = child_runs(uri)
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies, mid-sweep
        driver.wait(timeout=30)
        time.sleep(5)
        env.pop("RAYSWEEP_FAULT_PAUSE_AFTER_FIRST_CHECKPOINT_S")  # the resumed sweep runs unheld
        resumed = subprocess.run([sys.executable, "-m", "raysweep.cli", "resume", name, "--tracking-uri", uri],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert f"Pareto front of sweep {name}" in resumed.stdout
    finally:
        kill_pids(started)  # orphaned ray:: helpers of the killed driver, by PID
    return before, child_runs(uri)


def assert_resume_invariants(before, after, n_trials):
    finished_before = {r.data.tags["raysweep.trial_id"] for r in before if r.info.status == "FINISHED"}
    finished = [r for r in after if r.info.status == "FINISHED"]
    ids = [r.data.tags["raysweep.trial_id"] for r in finished]
    assert len(ids) == len(set(ids)), "one FINISHED child run per trial"
    assert len(set(ids)) == n_trials, "the sweep reached its budget"
    for r in finished:
        if r.data.tags["raysweep.trial_id"] in finished_before:
            assert "raysweep.restarts" not in r.data.tags, "a finished trial ran again"
    assert not [r for r in after if r.info.status == "RUNNING"], "no stale RUNNING runs"


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", event="driver_killed_resume", export="none", eval_every="off", scheduler="fifo")
def test_resume_after_the_driver_is_killed(tmp_path, tofu_dir, shared_cache):
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=6, steps=25)
    prepare(load_job(path))
    before, after = kill_and_resume(tmp_path, path, job["sweep"]["tracking_uri"], "killme", 6)
    assert_resume_invariants(before, after, 6)


@pytest.mark.matrix(strategy="inline", method="graddiff", precision="fp32", lora="off", gradient_checkpointing="off", event="driver_killed_resume", export="none", eval_every="on", scheduler="mo_asha")
def test_resume_with_evaluations_along_the_run_and_mo_asha(tmp_path, tofu_dir, shared_cache):
    """Issue 11: the same invariants with eval.every and the scheduler on, plus: a trial the
    scheduler stopped stays stopped (no objectives, not restarted, PRUNED in Optuna)."""
    from ray.tune.search.optuna import OptunaSearch

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    # 60 steps: rungs at 10, 20 and 40 before the end; every trial is held at its first checkpoint
    # (step 5), so the trial after one the scheduler stopped is caught running.
    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=6, steps=60)
    job["eval"]["every"] = 10
    job["sweep"]["max_concurrent"] = 1
    job["sweep"]["scheduler"] = {"name": "mo_asha", "grace_period": 10, "reduction_factor": 2}
    path.write_text(yaml.safe_dump(job))
    prepare(load_job(path))
    uri = job["sweep"]["tracking_uri"]

    def stopped_and_running(runs):
        return any(r.data.tags.get("raysweep.stopped_by") for r in runs) and any(r.info.status == "RUNNING" for r in runs)

    before, after = kill_and_resume(tmp_path, path, uri, "killsched", 6, mid_point=stopped_and_running)
    assert_resume_invariants(before, after, 6)
    stopped_before = {r.data.tags["raysweep.trial_id"] for r in before if r.data.tags.get("raysweep.stopped_by")}
    assert stopped_before
    by_id = {r.data.tags["raysweep.trial_id"]: r for r in after}
    for t in stopped_before:
        r = by_id[t]
        assert r.data.tags.get("raysweep.stopped_by") == "mo_asha", "a stopped trial stays stopped"
        assert not any(k.startswith("objective/") for k in r.data.metrics), "it never ran to its end"
        assert "raysweep.restarts" not in r.data.tags
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "runs" / "killsched"))
    pruned = [t for t in searcher._ot_study.trials if t.state.name == "PRUNED"]
    assert len(pruned) >= len(stopped_before)
    assert all("last_values" in t.user_attrs for t in pruned)


def test_two_node_cluster_with_mlflow_server(tmp_path, tofu_dir, shared_cache, mlflow_server):
    import ray
    from ray.cluster_utils import Cluster

    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    # A worker asks for 2 of a node's 3 logical CPUs, so two concurrent trials need both nodes.
    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=4, steps=10, tracking_uri=mlflow_server,
                          cpus_per_worker=2)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        report = launch(load_job(path), address=cluster.address, name="twonode")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert report["n_finished"] == 4
    nodes = {r.data.tags.get("raysweep.worker_node") for r in child_runs(mlflow_server)}
    assert len(nodes) == 2, f"trials ran on {nodes}"
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", "pareto", "twonode", "--tracking-uri", mlflow_server,
                          "--json", "--no-log", "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert {r["trial_id"] for r in json.loads(res.stdout)["front"]} == {r["trial_id"] for r in report["front"]}


def _reached(moment: str, runs: list) -> bool:
    running = [r for r in runs if r.info.status == "RUNNING"]
    if moment == "trials-starting":  # the first child runs exist, nothing has finished
        return bool(running) and not [r for r in runs if r.info.status != "RUNNING"]
    # results being logged: final metrics written, the run not closed yet (held by the fault hook)
    return any(any(k.startswith("final/") for k in r.data.metrics) for r in running)


@pytest.mark.parametrize("moment", ["trials-starting", "results-logging"])
def test_resume_after_the_driver_is_killed_at(moment, tmp_path, tofu_dir, shared_cache):
    """The driver SIGKILLed while the first trials start (fault hook: held at their first
    checkpoint), or while a trial's results are being logged (a fault hook holds the trial 8 s
    between its final metrics and closing its run); then
    ``raysweep resume``: every trial exactly once FINISHED with metrics and checkpoint, no finished
    trial re-run, the budget reached, nothing left RUNNING."""
    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    path, job = sweep_job(tmp_path, tofu_dir, shared_cache, n_trials=4, steps=10)
    prepare(load_job(path))
    uri = job["sweep"]["tracking_uri"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    if moment == "results-logging":
        env["RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S"] = "8"
    else:  # the first trials held running, so none can finish before the poll sees them
        env["RAYSWEEP_FAULT_PAUSE_AFTER_FIRST_CHECKPOINT_S"] = str(HOLD_AT_FIRST_CHECKPOINT_S)
    driver = start_driver(tmp_path, path, "killme", uri, env)
    started: set = set()
    try:
        wait_until(lambda runs: _reached(moment, runs), moment, tmp_path, driver, uri, started)
        finished_before = {r.data.tags["raysweep.trial_id"] for r in child_runs(uri) if r.info.status == "FINISHED"}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        time.sleep(5)
        env.pop("RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S", None)
        env.pop("RAYSWEEP_FAULT_PAUSE_AFTER_FIRST_CHECKPOINT_S", None)
        resumed = subprocess.run([sys.executable, "-m", "raysweep.cli", "resume", "killme", "--tracking-uri", uri],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
    finally:
        kill_pids(started)
    runs = child_runs(uri)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    ids = [r.data.tags["raysweep.trial_id"] for r in finished]
    assert len(ids) == len(set(ids)) == 4, f"{moment}: one FINISHED run per trial, budget reached: {ids}"
    for r in finished:
        assert "objective/forget_answer_loss" in r.data.metrics and r.data.tags.get("raysweep.checkpoint_uri")
        if r.data.tags["raysweep.trial_id"] in finished_before:
            assert "raysweep.restarts" not in r.data.tags, "a finished trial ran again"
    assert not [r for r in runs if r.info.status == "RUNNING"], "no stale RUNNING runs"
