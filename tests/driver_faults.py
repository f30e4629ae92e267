"""A sweep's driver as a user runs it, and the faults the tests give it: launched in the
background, watched through its MLflow child runs until a held moment is reached, SIGKILLed, and
its orphaned Ray processes killed by PID."""

import os
import signal
import subprocess
import sys
import time

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
