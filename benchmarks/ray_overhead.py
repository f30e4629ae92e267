"""What the Ray path costs over the bare engine, measured side by side in one run (issue 8).

    python benchmarks/ray_overhead.py [--job jobs/quickstart.yaml] [--threads 1] [--steps 16 64]
                                      [--sweep-trials 4]

1. ``raysweep run JOB`` (bare engine, one process) vs ``raysweep run JOB --ray`` at each step
   count, as fresh processes, alternating order: whole-trial wall time, and the steady-state
   per-step time each loop measured itself (median of the steps after the first 2). Both use the
   same torch thread count (``train.threads_per_worker``).
2. The fixed start-up of a one-worker trial *inside a running sweep* (trials 2.. of a sweep at
   concurrency 1), split into its parts, for the pre-rework path (``train.inline: false``: a Ray
   Train worker group per trial, a fresh trial process) and the current one (inline, reused
   process). "process" is from Tune starting the trial to the trial function running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}


def run_cli(args: list[str], out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", *args, "--out", str(out)], capture_output=True,
                         text=True, env=ENV, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: raysweep {' '.join(args)}\n{res.stderr[-3000:]}")
    return wall, json.loads(out.read_text())


class StartupRecorder:
    """A Tune callback (picklable) that writes when each trial started and its final result."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write({"trial": trial.trial_id, "started": time.time()})

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        self._write({"trial": trial.trial_id, "result": {k: v for k, v in r.items()
                                                         if k.startswith("startup/") or k == "trial_entered_at"}})

    def __getattr__(self, name):  # every other Tune hook is a no-op
        if name.startswith("on_") or name in ("setup", "get_state", "set_state"):
            return lambda *a, **k: None
        raise AttributeError(name)


def sweep_startup(job_path: str, inline: bool, trials: int, threads: int, out: str) -> None:
    """Runs in a fresh process: a small sweep at concurrency 1, recording start-up parts."""
    import ray
    from ray.tune import Callback

    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    tmp = Path(tempfile.mkdtemp(prefix="rs-startup-"))
    job = load_job(job_path, {"sweep.num_trials": trials, "sweep.max_concurrent": 1, "sweep.sampler": "random",
                              "unlearn.steps": 4, "train.inline": inline, "train.threads_per_worker": threads,
                              "train.cpus_per_worker": threads, "eval.max_questions": 20, "eval.max_new_tokens": 8,
                              "sweep.checkpoint": "uri"})
    recorder = type("Recorder", (StartupRecorder, Callback), {})(out)
    launch(job, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", storage=str(tmp / "runs"), name="startup",
           callbacks=[recorder])
    ray.shutdown()


def startup_parts(path: Path) -> list[dict]:
    started, results = {}, {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "started" in row:
            started[row["trial"]] = row["started"]
        else:
            results[row["trial"]] = row["result"]
    out = []
    for tid in sorted(started, key=started.get):
        r = results.get(tid, {})
        parts = {"process": r.get("trial_entered_at", started[tid]) - started[tid]}
        parts.update({k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("startup/") and k != "startup/build"})
        parts = {k: v for k, v in parts.items() if not k.startswith("build/") or v >= 0.005}
        parts["total"] = parts["process"] + r.get("startup/mlflow_child", 0.0) + r.get("startup/worker_group_start", 0.0) \
            + r.get("startup/build", 0.0)
        out.append(parts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--sweep-trials", type=int, default=4)
    ap.add_argument("--_startup", choices=["inline", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._startup:
        return sweep_startup(args.job, args._startup == "inline", args.sweep_trials, args.threads, args._out)

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    prepare(load_job(args.job))
    tmp = Path(tempfile.mkdtemp(prefix="rs-overhead-"))
    common = ["--set", f"train.threads_per_worker={args.threads}", "--set", f"train.cpus_per_worker={args.threads}",
              "--quiet"]
    rows = {}
    for i, steps in enumerate(args.steps):
        base = ["run", args.job, "--set", f"unlearn.steps={steps}", *common]
        order = ["bare", "ray"] if i % 2 == 0 else ["ray", "bare"]
        for path in order:
            extra = ["--ray", "--storage", str(tmp / "ray")] if path == "ray" else []
            rows[(steps, path)] = run_cli(base + extra, tmp / f"{path}_{steps}.json")
            print(f"  {path:4s} {steps:3d} steps: {rows[(steps, path)][0]:6.1f} s wall, "
                  f"{rows[(steps, path)][1]['step_seconds_median'] * 1000:6.1f} ms/step", flush=True)

    startup = {}
    for mode in ("train", "inline"):
        out = tmp / f"startup_{mode}.jsonl"
        res = subprocess.run([sys.executable, __file__, "--job", args.job, "--sweep-trials", str(args.sweep_trials),
                              "--threads", str(args.threads), "--_startup", mode, "--_out", str(out)],
                             capture_output=True, text=True, env=ENV, cwd=REPO)
        if res.returncode != 0:
            raise SystemExit(f"startup sweep ({mode}) failed:\n{res.stderr[-3000:]}")
        startup[mode] = startup_parts(out)

    print(f"\nquickstart job, torch threads {args.threads} on both paths; {os.cpu_count()} cores")
    print("steady-state step time (median after 2 warm-up steps), Ray path / bare engine:")
    for steps in args.steps:
        r, b = rows[(steps, "ray")][1]["step_seconds_median"], rows[(steps, "bare")][1]["step_seconds_median"]
        print(f"  {steps:3d} steps: {r * 1000:6.1f} / {b * 1000:6.1f} ms = {r / b:.3f}")
    print("whole trial (fresh process, evaluation before and after), Ray path / bare engine:")
    for steps in args.steps:
        r, b = rows[(steps, "ray")][0], rows[(steps, "bare")][0]
        print(f"  {steps:3d} steps: {r:6.1f} / {b:6.1f} s = {r / b:.2f}")
    print(f"one-worker trial start-up inside a running sweep (trials 2..{args.sweep_trials}, mean seconds):")
    for mode, label in (("train", "before: Ray Train worker group per trial"), ("inline", "after: inline, reused process")):
        later = startup[mode][1:] or startup[mode]
        keys = sorted({k for p in later for k in p if k != "total"}, key=lambda k: -statistics.mean(p.get(k, 0) for p in later))
        parts = ", ".join(f"{k} {statistics.mean(p.get(k, 0.0) for p in later):.2f}" for k in keys)
        print(f"  {label}: {statistics.mean(p['total'] for p in later):5.2f} s  ({parts})")
        print(f"    first trial of the sweep (fresh process): {startup[mode][0]['total']:.2f} s")


if __name__ == "__main__":
    main()
