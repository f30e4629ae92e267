"""Multi-objective early stopping pays for itself (issue 11): hypervolume reached vs unlearning
steps spent, with and without MO-ASHA, on the quickstart job, over several seeds.

    python benchmarks/search_efficiency.py [--job jobs/quickstart.yaml] [--seeds 0 1 2] [--trials 8]
                                           [--steps 32] [--every 8] [--reduction-factor 3]
                                           [--plot benchmarks/search_efficiency.png]

Each (seed, condition) is one ``raysweep launch`` (fresh process, its own sqlite MLflow) with the
same sampler and seed, ``eval.every`` on in both conditions so both see every trajectory point as a
front candidate; the only difference is ``sweep.scheduler: mo_asha`` (grace period = eval.every,
``--reduction-factor``). From MLflow alone, each evaluation event in time order adds the steps its
trial spent since its previous evaluation; the hypervolume of every point evaluated so far (the
job's reference point) is recorded against that running total.

Printed: final hypervolume per seed and condition, total steps, and the steps the scheduler needed
to reach 99% of the no-scheduler sweep's final hypervolume of the same seed - target: the same
final hypervolume within the seeds' spread for at most half the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}


def run_sweep(args, seed: int, scheduler: bool, work: Path) -> Path:
    db = work / f"{'asha' if scheduler else 'fifo'}-{seed}.db"
    sets = {"sweep.seed": seed, "sweep.num_trials": args.trials, "sweep.max_concurrent": 1,
            "unlearn.steps": args.steps, "eval.every": args.every, "eval.max_questions": args.questions,
            "train.checkpoint_every": args.every}
    if scheduler:
        sets["sweep.scheduler"] = json.dumps({"name": "mo_asha", "grace_period": args.every,
                                              "reduction_factor": args.reduction_factor})
    cmd = [sys.executable, "-m", "raysweep.cli", "launch", args.job, "--name", db.stem,
           "--tracking-uri", f"sqlite:///{db}", "--storage", str(work / "runs")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    print(f"  {db.stem}: done", flush=True)
    return db


def curve(db: Path, sweep: str) -> tuple[list[int], list[float]]:
    """(cumulative steps, hypervolume so far) after each evaluation event of the sweep."""
    from raysweep.sweep import tracking
    from raysweep.sweep.pareto import hypervolume

    c = tracking.client(f"sqlite:///{db}")
    parent = tracking.find_parent(c, sweep, f"sqlite:///{db}")
    objectives = tracking.parent_objectives(parent)
    ref = json.loads(parent.data.tags["raysweep.reference_point"])
    names, dirs = list(objectives), list(objectives.values())
    events = []
    for run in tracking.child_runs(c, parent):
        hist = {k: {m.step: m for m in c.get_metric_history(run.info.run_id, f"eval/{k}")} for k in names}
        for step in sorted(set.intersection(*(set(h) for h in hist.values()))):
            events.append((max(hist[k][step].timestamp for k in names), run.info.run_id, step,
                           [hist[k][step].value for k in names]))
    events.sort()
    spent, last_step, pts, xs, ys = 0, {}, [], [], []
    for _, run_id, step, values in events:
        spent += step - last_step.get(run_id, 0)
        last_step[run_id] = step
        pts.append(values)
        xs.append(spent)
        ys.append(hypervolume(np.array(pts), dirs, [ref[k] for k in names]))
    return xs, ys


def steps_to_reach(xs: list[int], ys: list[float], target: float) -> float:
    for x, y in zip(xs, ys):
        if y >= target - 1e-12:
            return x
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--questions", type=int, default=40, help="eval.max_questions (each evaluation)")
    ap.add_argument("--reduction-factor", type=float, default=3.0)
    ap.add_argument("--plot", default=str(REPO / "benchmarks" / "search_efficiency.png"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raysweep-search-eff-"))
    results = {}
    for seed in args.seeds:
        for scheduler in (False, True):
            db = run_sweep(args, seed, scheduler, work)
            results[(seed, scheduler)] = curve(db, db.stem)

    final = {k: (v[0][-1], v[1][-1]) for k, v in results.items()}
    fifo_hv = [final[(s, False)][1] for s in args.seeds]
    asha_hv = [final[(s, True)][1] for s in args.seeds]
    target = statistics.mean(fifo_hv)
    spread = (max(fifo_hv) - min(fifo_hv)) if len(fifo_hv) > 1 else 0.0
    print(f"\nquickstart job, {args.trials} trials x {args.steps} steps, eval every {args.every}, seeds {args.seeds}")
    print(f"MO-ASHA: grace period {args.every}, reduction factor {args.reduction_factor:g}")
    print(f"{'seed':>4}  {'FIFO steps':>10}  {'FIFO HV':>8}  {'MO-ASHA steps':>13}  {'MO-ASHA HV':>10}  "
          f"{'steps to 99% of FIFO HV: FIFO, MO-ASHA':>38}")
    for s in args.seeds:
        goal = 0.99 * final[(s, False)][1]
        r_fifo = steps_to_reach(*results[(s, False)], goal)
        r_asha = steps_to_reach(*results[(s, True)], goal)
        print(f"{s:>4}  {final[(s, False)][0]:>10}  {final[(s, False)][1]:>8.4f}  {final[(s, True)][0]:>13}  "
              f"{final[(s, True)][1]:>10.4f}  {r_fifo:>30}, {r_asha}")
    fifo_steps = statistics.mean(final[(s, False)][0] for s in args.seeds)
    asha_steps = statistics.mean(final[(s, True)][0] for s in args.seeds)
    print(f"mean final HV: FIFO {target:.4f} (spread {spread:.4f}), MO-ASHA {statistics.mean(asha_hv):.4f}")
    print(f"mean steps spent: FIFO {fifo_steps:.0f}, MO-ASHA {asha_steps:.0f} = {asha_steps / fifo_steps:.2f} of FIFO")
    within = statistics.mean(asha_hv) >= target - spread
    print(f"MO-ASHA final HV within the seeds' spread of FIFO's: {'yes' if within else 'no'}; "
          f"steps ratio {asha_steps / fifo_steps:.2f} (target <= 0.5)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for (s, sched), (xs, ys) in sorted(results.items()):
        ax.step(xs, ys, where="post", color="tab:orange" if sched else "tab:blue", alpha=0.8,
                label=("MO-ASHA" if sched else "FIFO (no early stopping)") if s == args.seeds[0] else None)
    ax.axhline(target, color="gray", ls="--", lw=1, label="FIFO mean final HV")
    ax.set_xlabel("unlearning steps spent (all trials)")
    ax.set_ylabel("hypervolume of evaluated points")
    ax.set_title(f"quickstart, {args.trials} trials, {len(args.seeds)} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
