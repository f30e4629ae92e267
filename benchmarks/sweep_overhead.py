"""What a sweep costs over a researcher's own loop, measured side by side in one run (issue 8).

    python benchmarks/sweep_overhead.py [--job jobs/quickstart.yaml] [--trials N] [--steps 16] [--threads 1] [--repeat 2]

Runs in fresh processes, same job, same trial count (default: the job's own ``sweep.num_trials``, 8
for the quickstart), same sampler and seed. The two that the target compares, ``bare`` and
``launch c=1``, run ``--repeat`` times alternately (bare, launch, bare, launch, ...) so that a noisy
minute on a shared machine does not decide the ratio: it is taken over their sums, and each pair's
own ratio is printed too.

* ``bare``: a plain Optuna loop in one process (``study.ask`` with the job's search space, the
  trial run by ``raysweep.distributed.single.run_trial`` - the same ``run_worker`` loop a sweep trial
  runs - then ``study.tell``), no Ray, no MLflow;
* ``launch c=1``: ``raysweep launch`` at concurrency 1 (local Ray, sqlite MLflow, checkpoints,
  the console, the Pareto report at the end);
* ``launch c=2``: the same at concurrency 2;
* ``launch c=1, running Ray``: concurrency 1 with ``--address`` to a Ray already running (what a
  cluster user pays: Ray's own start, ~5 s here, is not part of the sweep).

It prints the wall-clock ratio launch(c=1) / bare (target <= 1.15) and the throughput ratio
c=2 / c=1, with the per-trial step times that show what limits the latter on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}
NO_AUTH = {**ENV, "RAY_AUTH_MODE": "disabled"}


def overrides(args, concurrency: int) -> dict:
    return {"sweep.num_trials": args.trials, "sweep.max_concurrent": concurrency, "unlearn.steps": args.steps,
            "train.threads_per_worker": args.threads, "train.cpus_per_worker": args.threads}


def bare_loop(args) -> None:
    """Runs in a fresh process: the researcher's own Optuna loop around the same trial function."""
    import optuna

    from raysweep.distributed.single import run_trial
    from raysweep.spec import load_job
    from raysweep.sweep.searcher import make_sampler
    from raysweep.sweep.space import SearchSpace
    from raysweep.sweep.trial import trial_job

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job = load_job(args.job, overrides(args, 1))
    sw = job.sweep
    space = SearchSpace.load(sw.search_space)
    study = optuna.create_study(directions=["minimize" if d == "min" else "maximize" for d in sw.objectives.values()],
                                sampler=make_sampler(sw.sampler, sw.seed))
    ctx = {"space": space.raw, "space_source": space.source, "job_json": job.model_dump_json()}
    steps, seconds = [], []
    for _ in range(sw.num_trials):
        trial = study.ask()
        space.define_by_run(trial)
        t0 = time.perf_counter()
        result = run_trial(trial_job(trial.params, ctx), progress=False, evaluate_before=False)
        seconds.append(time.perf_counter() - t0)
        steps.append(result["step_seconds_median"])
        if result["stopped"]:
            study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [result["after"][m] for m in sw.objectives])
    Path(args._out).write_text(json.dumps({"step_seconds_median": steps, "trial_seconds": seconds}))


def timed(cmd: list[str], env: dict = ENV) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall


def launch_trials(db: Path) -> tuple[list[float], list[float]]:
    """Per-trial steady-state step times and child-run durations logged by the sweep."""
    import mlflow

    c = mlflow.tracking.MlflowClient(f"sqlite:///{db}")
    runs = [r for r in c.search_runs([e.experiment_id for e in c.search_experiments()])
            if "raysweep.trial_id" in r.data.tags]
    timings = [json.loads(Path(c.download_artifacts(r.info.run_id, "timings.json")).read_text()) for r in runs]
    return ([t["step_seconds_median"] for t in timings if "step_seconds_median" in t],
            [(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time])


@contextlib.contextmanager
def running_ray():
    """A local Ray head held by its own process (stopped with it), for ``--address``; never
    ``ray stop``, which would stop every Ray on the machine. Ray 2.60's token auth is off on both
    sides of this loopback-only pair (environment.md: it must match on head and driver)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=%d, include_dashboard=False, "
         "logging_level='ERROR'); print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read(); "
         "ray.shutdown()" % (os.cpu_count() or 1)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=NO_AUTH, cwd=REPO)
    try:
        yield holder.stdout.readline().strip()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=None, help="default: the job's sweep.num_trials")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="alternated bare / launch c=1 runs (default 2)")
    ap.add_argument("--_bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._bare:
        return bare_loop(args)

    from raysweep.models.prepare import prepare
    from raysweep.spec import load_job

    job = load_job(args.job)
    args.trials = args.trials or job.sweep.num_trials
    prepare(job)  # the cached target, outside every timing
    tmp = Path(tempfile.mkdtemp(prefix="rs-sweep-overhead-"))
    from raysweep.sweep.sqlite_store import seed_new_store

    seed_new_store(f"sqlite:///{tmp / 'warm.db'}")  # the once-per-machine MLflow store template, untimed
    walls, steps, seconds = {}, {}, {}

    def bare(key) -> None:
        out = tmp / f"{key}.json"
        walls[key] = timed([sys.executable, __file__, "--_bare", "--_out", str(out), "--job", args.job,
                            "--trials", str(args.trials), "--steps", str(args.steps), "--threads", str(args.threads)])
        result = json.loads(out.read_text())
        steps[key], seconds[key] = result["step_seconds_median"], result["trial_seconds"]

    def launch(key, c: int, *extra: str, env: dict = ENV) -> None:
        db = tmp / f"{key}.db"
        sets = [x for k, v in overrides(args, c).items() for x in ("--set", f"{k}={v}")]
        walls[key] = timed([sys.executable, "-m", "raysweep.cli", "launch", args.job, *sets, "--name", f"overhead-{key}",
                            "--tracking-uri", f"sqlite:///{db}", "--storage", str(tmp / f"runs-{key}"), *extra], env)
        steps[key], seconds[key] = launch_trials(db)

    for i in range(args.repeat):
        bare(f"bare{i}")
        print(f"  bare Optuna loop ({i + 1}/{args.repeat}): {walls[f'bare{i}']:6.1f} s", flush=True)
        launch(f"c1-{i}", 1)
        print(f"  raysweep launch c=1 ({i + 1}/{args.repeat}): {walls[f'c1-{i}']:6.1f} s", flush=True)
    launch("c2", 2)
    print(f"  raysweep launch c=2: {walls['c2']:6.1f} s", flush=True)
    with running_ray() as address:
        launch("running", 1, "--address", address, env=NO_AUTH)
    print(f"  raysweep launch c=1 --address (Ray already running): {walls['running']:6.1f} s", flush=True)
    # The repeats pooled: walls averaged, per-trial figures over every run.
    pooled = {"bare": [f"bare{i}" for i in range(args.repeat)], 1: [f"c1-{i}" for i in range(args.repeat)],
              2: ["c2"], "running": ["running"]}
    for name, keys in pooled.items():
        walls[name] = sum(walls[k] for k in keys) / len(keys)
        steps[name] = [x for k in keys for x in steps[k]]
        seconds[name] = [x for k in keys for x in seconds[k]]

    n = args.trials
    print(f"\n{n} trials of {args.steps} steps, torch threads {args.threads}, {os.cpu_count()} cores")
    pairs = ", ".join(f"{walls[f'c1-{i}'] / walls[f'bare{i}']:.3f}" for i in range(args.repeat))
    print(f"wall clock: launch c=1 / bare Optuna loop = {walls[1]:.1f} / {walls['bare']:.1f} s "
          f"= {walls[1] / walls['bare']:.3f}  (target <= 1.15; mean of {args.repeat} alternated runs each, "
          f"pairs {pairs})")
    # Each wall clock is a part outside the trials plus the trials themselves (per run, averaged).
    outside = {k: walls[k] - sum(seconds[k]) / len(pooled[k]) for k in (1, "bare")}
    fixed = outside[1] - outside["bare"]
    print(f"  of which: trials {sum(seconds[1]) / args.repeat:.1f} vs {sum(seconds['bare']) / args.repeat:.1f} s (median trial "
          f"{median(seconds[1]):.2f} vs {median(seconds['bare']):.2f} s: checkpoints, MLflow child run, Tune), "
          f"fixed cost outside trials {fixed:+.1f} s (Ray start, Tune, MLflow parent run, Pareto report)")
    # The ratio (outside + n per_trial) / (outside_bare + n bare_per_trial) is <= 1.15 from this n on
    per_trial, bare_per_trial = sum(seconds[1]) / len(seconds[1]), sum(seconds["bare"]) / len(seconds["bare"])
    if 1.15 * bare_per_trial > per_trial:
        need = (outside[1] - 1.15 * outside["bare"]) / (1.15 * bare_per_trial - per_trial)
        print(f"  the fixed cost is paid once: the ratio is <= 1.15 from {max(1, math.ceil(need))} trials of this length on")
    print(f"with Ray already running (--address): launch c=1 / bare = {walls['running']:.1f} / {walls['bare']:.1f} s "
          f"= {walls['running'] / walls['bare']:.3f}")
    print(f"throughput: c=2 / c=1 = {(n / walls[2]) / (n / walls[1]):.3f} "
          f"({n / walls[1] * 60:.1f} vs {n / walls[2] * 60:.1f} trials/min)")
    print(f"median step time per trial: bare {median(steps['bare']) * 1000:.1f} ms, c=1 "
          f"{median(steps[1]) * 1000:.1f} ms, c=2 {median(steps[2]) * 1000:.1f} ms "
          f"(c=2 / c=1 = {median(steps[2]) / median(steps[1]):.2f}: two trials share "
          f"{os.cpu_count()} cores and their memory bandwidth)")


if __name__ == "__main__":
    main()
