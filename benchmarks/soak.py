"""Soak (issue 12, item 5): a sweep of many very short trials; the driver's memory growth and
what is left behind.

    python benchmarks/soak.py [--trials 60] [--steps 2] [--concurrency 2]

One ``launch`` in this process (local Ray, sqlite MLflow, the quickstart job with tiny
evaluations). A Tune callback samples the driver's RSS after every finished trial. Printed:
RSS after the first trials and at the end, the growth (target < 200 MB) and its slope per trial
over the second half; then the leak checks: Ray actors still alive before shutdown (beyond
Tune's own), processes this driver started that outlive ``ray.shutdown()``, and MLflow runs of
the sweep left RUNNING. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}.items():
    os.environ[k] = v


SAMPLES: list[tuple[int, float]] = []  # (trials finished, driver RSS in MB)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()

    import psutil
    import ray
    from ray.tune import Callback

    from raysweep.spec import load_job
    from raysweep.sweep.driver import launch

    me = psutil.Process()
    samples = SAMPLES

    class RssSampler(Callback):
        # Tune pickles its callbacks into the experiment state: no process handle kept here.
        def on_trial_complete(self, iteration, trials, trial, **info):
            done = sum(t.status == "TERMINATED" for t in trials) + 1
            SAMPLES.append((done, psutil.Process().memory_info().rss / 2**20))

    work = Path(tempfile.mkdtemp(prefix="raysweep-soak-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    job = load_job(args.job, {"sweep.num_trials": args.trials, "sweep.max_concurrent": args.concurrency,
                              "unlearn.steps": args.steps, "train.checkpoint_every": 0,
                              "eval.max_questions": 8, "eval.max_new_tokens": 8,
                              "sweep.tracking_uri": uri, "sweep.storage_path": str(work / "runs")})
    rss_start = me.memory_info().rss / 2**20
    t0 = time.time()
    report = launch(job, name="soak", callbacks=[RssSampler()], summary_every_seconds=1e9)
    wall = time.time() - t0

    # The GCS actor table (the state API needs the dashboard, which sweeps do not start).
    from ray._private.state import actors as gcs_actors

    alive = [a for a in gcs_actors().values() if a.get("State") == "ALIVE"]
    ours = [a for a in alive if any(k in a.get("ActorClassName", "") for k in ("ImplicitFunc", "Trainable",
                                                                                 "ProgressBoard"))]
    children_before = {p.pid for p in me.children(recursive=True)}
    ray.shutdown()
    time.sleep(3)
    leaked = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=10000)
    running = [r for r in runs if r.info.status == "RUNNING"]
    statuses = {s: sum(r.info.status == s for r in runs) for s in {r.info.status for r in runs}}

    first = samples[min(4, len(samples) - 1)][1] if samples else rss_start
    end = samples[-1][1] if samples else me.memory_info().rss / 2**20
    half = samples[len(samples) // 2:]
    slope = (half[-1][1] - half[0][1]) / max(1, half[-1][0] - half[0][0]) if len(half) > 1 else 0.0
    print(f"soak: {args.trials} trials x {args.steps} steps, concurrency {args.concurrency}: {wall:.0f} s, "
          f"{report['n_finished']} finished; MLflow runs {statuses}")
    print(f"driver RSS: {rss_start:.0f} MB before launch, {first:.0f} MB after trial 5, {end:.0f} MB after the last; "
          f"growth trial 5 -> end {end - first:+.0f} MB (target < 200), second-half slope {slope:+.2f} MB/trial")
    print(f"leaks: {len(ours)} trial/board actors alive at the end of the sweep (of {len(alive)} actors), "
          f"{len(leaked)} processes outliving ray.shutdown() (of {len(children_before)} before), "
          f"{len(running)} MLflow runs RUNNING")
    ok = end - first < 200 and not ours and not leaked and not running and report["n_finished"] == args.trials
    print("soak:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
