"""A sweep's first trial starts on a Python worker Ray started with itself, not on a new process.

Tune gives every trial actor a runtime env of its own (``PL_DISABLE_FORK``); Ray then cannot hand
the actor one of the idle workers it prestarts, and the first trial waits for a new interpreter
(~2.5 s here, ``benchmarks/sweep_overhead.py``). ``raysweep.sweep.driver`` lets the workers
inherit the variable instead. Checked on a real local Ray through Tune's own actor-class cache,
with the unpatched cache as the control. Only the probe's own Ray workers are counted, so another Ray
on the machine (a sweep, another test run) changes nothing.
"""

import json
import os
import subprocess
import sys

from ..conftest import REPO

PROBE = r"""
import json, os, time
import psutil, ray
from raysweep.sweep.driver import inherit_trial_actor_env, trial_actors_on_prestarted_workers

patched = os.environ["PROBE_PATCHED"] == "1"
if patched:
    inherit_trial_actor_env()
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")

def idle_workers():
    # This Ray's workers only (its raylet is this process's child): another Ray on the machine has its own.
    own = {p.pid for p in psutil.Process().children(recursive=True)}
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if p.pid in own and " ".join(p.info["cmdline"] or []).startswith("ray::IDLE")}

deadline = time.time() + 60
while len(idle_workers()) < 2 and time.time() < deadline:
    time.sleep(0.2)
prestarted = idle_workers()
if patched:
    trial_actors_on_prestarted_workers()

from ray.tune.execution.class_cache import _ActorClassCache

class Probe:
    def where(self):
        return os.getpid(), os.environ.get("PL_DISABLE_FORK")

actor = _ActorClassCache().get(Probe).remote()
pid, env = ray.get(actor.where.remote())
print(json.dumps({"prestarted": sorted(prestarted), "pid": pid, "env": env}))
ray.shutdown()
"""


def probe(patched: bool) -> dict:
    env = {**os.environ, "RAY_ADDRESS": "", "PROBE_PATCHED": "1" if patched else "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PL_DISABLE_FORK", None)
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_trial_actor_takes_a_prestarted_worker_and_still_sees_tunes_variable():
    got = probe(patched=True)
    assert len(got["prestarted"]) == 2, got
    assert got["pid"] in got["prestarted"], f"the trial actor started a new process: {got}"
    assert got["env"] == "1", "Tune's PL_DISABLE_FORK must still reach the trial (inherited)"


def test_control_tunes_own_runtime_env_needs_a_new_process():
    """Why the patch exists: with Tune's runtime env the actor cannot use a prestarted worker. If a
    newer Ray lifts this, the patch in driver.py is no longer needed (and this test says so)."""
    got = probe(patched=False)
    assert got["pid"] not in got["prestarted"], got
    assert got["env"] == "1"
