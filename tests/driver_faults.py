"""A sweep's driver as a user runs it, and the faults the tests give it: launched in the
background, watched through its MLflow child runs until a held moment is reached, SIGKILLed, and
its orphaned Ray processes killed by PID; then the points of the sweep that lived through it
exported and evaluated again."""

import json
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import psutil
import pytest


def child_runs(uri, experiment="raysweep/tiny-test"):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("raysweep.role") != "parent"]


def start_driver(tmp_path, path, name, uri, env):
    """``raysweep launch`` in the background, its output in launch.log. The sqlite tracking store is
    created here first: the test polls it while the driver starts, and two processes creating one
    new store at once collide ("table ... already exists")."""
    child_runs(uri)
    log = open(tmp_path / "launch.log", "w")
    return subprocess.Popen([sys.executable, "-m", "raysweep.cli", "launch", str(path), "--name", name],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def wait_until(reached, what, tmp_path, driver, uri, started: set, timeout: float = 600) -> None:
    """Poll the child runs until ``reached(runs)``; ``started`` collects the driver's process tree
    meanwhile (its orphans are killed by PID after the driver is). A driver that exits fails at once."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        started |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        if reached(child_runs(uri)):
            started |= {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
            return
        if driver.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"the sweep never reached {what}: " + (tmp_path / "launch.log").read_text()[-3000:])


def kill_pids(pids) -> None:
    """SIGKILL each process that is still there (a killed driver's orphaned ray:: helpers)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch_kill_resume(tmp_path, path, uri, name, *, kill_at_step: Optional[int], each_trial: bool = False):
    """``raysweep launch`` with two faults armed: a trial's worker (rank 1 when there are several)
    dies at ``kill_at_step`` (None: no worker dies) and the trial goes on from its checkpoint (the
    first trial to get there, once; with ``each_trial``, every trial once), and every trial is held
    between logging its results and closing its run. The driver is SIGKILLed while the first trial is held there,
    its orphans killed, and ``raysweep resume`` runs with the hold disarmed (a worker whose kill is
    recorded is not killed again; with ``each_trial``, trials not killed yet still are). Returns
    the kill marker: the file itself, or ``<marker>-<trial id>`` per trial with ``each_trial``."""
    marker = tmp_path / "worker_killed"
    env = {**os.environ, "RAY_ADDRESS": "", "RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S": "600"}
    if kill_at_step is not None:
        env.update({"RAYSWEEP_FAULT_KILL_AT_STEP": str(kill_at_step), "RAYSWEEP_FAULT_KILL_MARKER": str(marker),
                    **({"RAYSWEEP_FAULT_KILL_EACH_TRIAL": "1"} if each_trial else {})})

    def held(runs):  # results logged, run not closed: the trial waits in the pause hook
        return any(r.info.status == "RUNNING" and any(k.startswith("objective/") for k in r.data.metrics)
                   for r in runs)

    driver = start_driver(tmp_path, path, name, uri, env)
    started: set[int] = set()
    try:
        wait_until(held, "a trial held at its close", tmp_path, driver, uri, started, timeout=900)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        kill_pids(started)  # the killed driver's Ray, before the resume starts its own
        del env["RAYSWEEP_FAULT_PAUSE_BEFORE_CLOSE_S"]
        resumed = subprocess.run([sys.executable, "-m", "raysweep.cli", "resume", name, "--tracking-uri", uri],
                                 capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
    finally:
        kill_pids(started)
    return marker


def export_and_evaluate(tmp_path, path, uri, sweep, point, label, **tolerance) -> None:
    """``raysweep export`` one point of a sweep (``point``: a row of ``pareto_report``'s trials;
    a mid-run one as TRIAL@STEP), load the folder with ``from_pretrained`` and check that
    ``raysweep eval`` of it reproduces the objectives the trial recorded there (``tolerance``:
    ``pytest.approx``'s rel/abs)."""
    from transformers import AutoModelForCausalLM

    from raysweep.cli import main

    out = tmp_path / label
    at = point["trial_id"] if point["final"] else f"{point['trial_id']}@{point['step']}"
    assert main(["export", sweep, at, str(out), "--tracking-uri", uri]) == 0, (label, point)
    AutoModelForCausalLM.from_pretrained(out)
    assert main(["eval", str(out), "--job", str(path), "--benchmark", "qa", "--out",
                 str(tmp_path / f"{label}.json")]) == 0, label
    again = json.loads((tmp_path / f"{label}.json").read_text())
    again = again.get("metrics", again)
    for k, v in point["objectives"].items():
        assert again[k] == pytest.approx(v, **tolerance), (label, k, point)
