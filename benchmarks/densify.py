"""``raysweep densify`` on the quickstart vs running more trials for the same time (issue 26, part 2).

    python benchmarks/densify.py [--job jobs/quickstart.yaml] [--lambdas 0.25 0.5 0.75] [--out densify.json]

1. ``raysweep launch`` the quickstart (its 8 trials): front and hypervolume, seconds per trial.
2. ``raysweep densify`` it: front and hypervolume after, evaluation seconds.
3. The other arm: ``raysweep launch --warm-start`` of the same sweep with as many extra trials as
   the densify time buys (at the first sweep's seconds per trial, at least one), so its front is
   the first sweep's trials plus the extra ones. Both hypervolumes are against the quickstart's
   stated reference point.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.ray_overhead import ENV  # noqa: E402  (one environment for every benchmark's CLI)


def cli(*args: str, cwd: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "raysweep.cli", *args], capture_output=True, text=True, cwd=cwd,
                         env=ENV)
    if res.returncode != 0:
        raise SystemExit(f"failed: raysweep {' '.join(args)}\n{res.stderr[-3000:]}")
    return res.stdout


def front_hv(uri: str, sweeps: list[str], interpolated: bool = True) -> tuple[float, int]:
    """Hypervolume and front size of the sweeps' feasible points together (``interpolated``: with
    densify's points), against the first sweep's reference point."""
    import numpy as np

    from raysweep.sweep import tracking
    from raysweep.sweep.pareto import hypervolume, non_dominated
    from raysweep.sweep.report import collect

    c = tracking.client(uri)
    rows = []
    for name in sweeps:
        got, objectives = collect(c, tracking.find_parent(c, name, uri))
        rows += [r for r in got if r["feasible"] and (interpolated or r["kind"] != "interpolated")]
    ref = json.loads(tracking.find_parent(c, sweeps[0], uri).data.tags["raysweep.reference_point"])
    names, directions = list(objectives), list(objectives.values())
    pts = np.array([[r["objectives"][n] for n in names] for r in rows])
    mask = non_dominated(pts, directions)
    return float(hypervolume(pts[mask], directions, [ref[n] for n in names])), int(mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--lambdas", nargs="+", default=["0.25", "0.5", "0.75"])
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="densify-bench-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        common = ["--tracking-uri", uri, "--storage", str(tmp / "runs")]
        t0 = time.time()
        cli("launch", args.job, "--name", "base", *common, cwd=REPO)
        base_s = time.time() - t0
        n_trials = yaml.safe_load(Path(args.job).read_text())["sweep"]["num_trials"]
        hv0, front0 = front_hv(uri, ["base"])

        t0 = time.time()
        summary = json.loads(cli("densify", "base", "--lambdas", *args.lambdas, "--json", "--tracking-uri", uri, cwd=REPO))
        densify_s = time.time() - t0
        hv1, front1 = front_hv(uri, ["base"])

        extra = max(1, math.floor(densify_s / (base_s / n_trials)))
        t0 = time.time()
        cli("launch", args.job, "--name", "more", "--warm-start", "base", "--set", f"sweep.num_trials={extra}",
            *common, cwd=REPO)
        more_s = time.time() - t0
        hv_more, front_more = front_hv(uri, ["base", "more"], interpolated=False)
    result = {"trials": n_trials, "sweep_seconds": base_s, "hypervolume": hv0, "front": front0,
              "densify": {"points": len(summary["evaluated"]), "seconds": densify_s,
                          "evaluation_seconds": summary["evaluation_seconds"], "hypervolume": hv1, "front": front1},
              "more_trials": {"trials": extra, "seconds": more_s, "hypervolume": hv_more, "front": front_more}}
    print(f"quickstart sweep: {n_trials} trials in {base_s:.0f} s: front {front0} points, HV {hv0:.4f}")
    print(f"densify ({len(summary['evaluated'])} interpolations, lambdas {' '.join(args.lambdas)}): {densify_s:.0f} s "
          f"({summary['evaluation_seconds']:.0f} s evaluating): front {front1} points, HV {hv1:.4f} ({hv1 - hv0:+.4f})")
    print(f"{extra} more trials instead (warm-started): {more_s:.0f} s: front {front_more} points, HV {hv_more:.4f} "
          f"({hv_more - hv0:+.4f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
