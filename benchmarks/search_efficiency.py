"""Search that pays (issue 26, part 1): hypervolume reached vs unlearning steps spent, with and
without early stopping, on a sweep of real shape (quickstart job, 24 trials x 32 steps, 2 at a
time, evaluated every 4 steps), over several seeds.

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--trials 24] [--steps 32] [--every 4]
                                           [--work DIR] [--validate ARM] [--arms ARM|PATTERN ...] [--space YAML]
                                           [--pool K] [--explain ARM] [--plot PNG]

How: one real FIFO sweep per seed (``raysweep launch``, the random sampler, its own sqlite MLflow;
kept in ``--work`` so a second call reuses it) records every trial's whole trajectory. With the
random sampler a trial's configuration depends only on the seed and its number, and a trial's
steps are bit-identical however often it is evaluated or whether others stop
(``tests/sweep/test_trajectory.py``), so what a scheduler would see is exactly that recording cut
short. Each arm then replays the sweep: two workers take the trials in the order the searcher
started them (their runs' start times), each evaluation is an event at its step count, and the
arm's real rung logic (``MOASHARungs``, the class the Tune scheduler asks) answers continue, pause
or stop there; a stopped or paused trial frees its worker at once. Steps spent = the steps the
trials trained; hypervolume = that of every evaluated point (the sweep's front candidates), at the
job's reference point. ``--validate ARM`` runs the arm for real on every seed given
(``sweep.scheduler`` in the job) and prints the replay's and the real sweep's numbers side by
side. The replay's only simplification is time: a step costs one unit and an evaluation none, so
an asynchronous arm's trials may reach a rung in another order live; a synchronous arm
(``promotion: synchronous``) decides each rung once it is complete, so its live sweep trains what
its replay trains (``tests/sweep/schedulers/test_mo_asha_sync.py``). ``--pool K`` replays K
recordings at a time as one sweep of K times the trials (``pooled``; the random sampler draws each
trial on its own), to ask what a bigger sweep would have done without recording it.

Printed per seed and arm: steps spent and their ratio to FIFO's, final hypervolume and its ratio to
FIFO's, steps until 99% of FIFO's final hypervolume; then the mean and the worst seed. Target: final
hypervolume >= 0.99 of FIFO's on every seed for <= 0.5 of FIFO's steps.
"""

from __future__ import annotations

import argparse
import fnmatch
import heapq
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}

# the baselines every scheduler must beat: no early stopping, fewer trials (the first 12 of 24;
# a quarter: a sweep planned smaller, where FIFO's own front fills early, as at 96 trials): the share
FEWER = {"FIFO, first half of the trials": 0.5, "FIFO, first quarter of the trials": 0.25}
# name -> MO-ASHA settings (None: FIFO, no early stopping; "fewer": FIFO on the first of the trials)
ARMS = {
    "FIFO": None,
    **dict.fromkeys(FEWER, "fewer"),
    "MO-ASHA g4 rf2 last": {"grace_period": 4, "reduction_factor": 2, "rank_by": "last"},
    "MO-ASHA g8 rf2 last": {"grace_period": 8, "reduction_factor": 2, "rank_by": "last"},
    "MO-ASHA g4 rf3 last": {"grace_period": 4, "reduction_factor": 3, "rank_by": "last"},
    "MO-ASHA g4 rf2 trajectory": {"grace_period": 4, "reduction_factor": 2, "rank_by": "trajectory"},
    "MO-ASHA g8 rf2 trajectory": {"grace_period": 8, "reduction_factor": 2, "rank_by": "trajectory"},
    "MO-ASHA g4 rf3 trajectory": {"grace_period": 4, "reduction_factor": 3, "rank_by": "trajectory"},
    "MO-ASHA g8 rf3 trajectory": {"grace_period": 8, "reduction_factor": 3, "rank_by": "trajectory"},
    "MO-ASHA g4 rf2 last crowding": {"grace_period": 4, "reduction_factor": 2, "rank_by": "last",
                                     "tie_break": "crowding"},
    "MO-ASHA g4 rf2 last keep-front": {"grace_period": 4, "reduction_factor": 2, "rank_by": "last",
                                       "keep_front": True},
    "MO-ASHA g4 rf2 trajectory keep-front": {"grace_period": 4, "reduction_factor": 2, "rank_by": "trajectory",
                                             "keep_front": True},
    "MO-ASHA g4 rf3 trajectory keep-front": {"grace_period": 4, "reduction_factor": 3, "rank_by": "trajectory",
                                             "keep_front": True},
    "MO-ASHA g8 rf3 trajectory keep-front": {"grace_period": 8, "reduction_factor": 3, "rank_by": "trajectory",
                                             "keep_front": True},
}
# Issue 26, the arms that can bring a trial back or see its trade-off coming: an optimistic point
# predicted at (1 + x) times the steps (``extrapolate``), and ASHA's promotion variant (``pause``:
# paused trials resume from their checkpoints when promoted); every combination at grace 4.
for _promotion in ("stop", "pause"):
    for _rf in (2, 3):
        for _rank in ("last", "trajectory"):
            for _x in ((1.0,) if _promotion == "stop" else (0.0, 1.0, 2.0)):
                for _kf in (False, True):
                    ARMS[f"MO-ASHA g4 rf{_rf} {_rank}" + (f" ex{_x:g}" if _x else "") + (" keep-front" if _kf else "")
                         + (" pause" if _promotion == "pause" else "")] = {
                        "grace_period": 4, "reduction_factor": _rf, "rank_by": _rank, "extrapolate": _x,
                        "keep_front": _kf, "promotion": _promotion}

# Successive halving (``promotion: synchronous``): each rung decided once, when every trial has
# reached it, so a live sweep trains what the replay trains whatever its timings; on the default
# rungs and on rungs placed apart from the fraction kept (``rung_levels``, "r4,12": steps 4 and 12).
for _rf in (2, 3):
    for _rank in ("last", "trajectory"):
        for _x in (0.0, 1.0):
            for _kf in (False, True):
                ARMS[f"SHA g4 rf{_rf} {_rank}" + (" ex1" if _x else "") + (" keep-front" if _kf else "")] = {
                    "grace_period": 4, "reduction_factor": _rf, "rank_by": _rank, "extrapolate": _x,
                    "keep_front": _kf, "promotion": "synchronous"}
for _levels in ((4, 12), (4, 12, 24), (4, 16), (4, 8, 20), (4, 8, 12, 20)):
    for _rank in ("last", "trajectory"):
        for _x in (0.0, 1.0):
            ARMS[f"SHA r{','.join(map(str, _levels))} rf2 {_rank}" + (" ex1" if _x else "") + " keep-front"] = {
                "grace_period": 4, "reduction_factor": 2, "rank_by": _rank, "extrapolate": _x, "keep_front": True,
                "promotion": "synchronous", "rung_levels": list(_levels)}
# Stratified by method (``stratify: method``): each rung keeps the best 1/rf of all trials and of
# each method's; beside each, the same arm without it, so the pair shows what stratifying does.
for _levels in ((4, 12), (4, 16), (4, 20), (4, 24)):
    for _rf in (2, 2.5, 3):
        for _stratify in (None, "method"):
            ARMS[f"SHA r{','.join(map(str, _levels))} rf{_rf:g} last" + (" by-method" if _stratify else "")] = {
                "grace_period": 4, "reduction_factor": _rf, "rank_by": "last", "promotion": "synchronous",
                "rung_levels": list(_levels), "stratify": _stratify}
# A step budget (``budget``: a share of every trial run to the end): once the last rung is decided,
# the steps the rungs left uncommitted resume waiting trials, the lowest rung first.
# " ties": trials tied exactly on the objectives at a rung ordered by ``tie_metrics`` (TIE_METRICS,
# the metrics the recordings are read with): the trial whose forget answers lost more probability first.
BUDGETS = (0.46, 0.48)
TIE_METRICS = {"forget_answer_prob": "min"}
for _levels in ((4, 12), (4, 16), (4, 20)):
    for _rf in (2, 2.5, 3):
        for _stratify in (None, "method"):
            for _budget in BUDGETS:
                for _ties in (None, TIE_METRICS):
                    ARMS[f"SHA r{','.join(map(str, _levels))} rf{_rf:g} last" + (" by-method" if _stratify else "")
                         + f" budget{_budget:g}" + (" ties" if _ties else "")] = {
                        "grace_period": 4, "reduction_factor": _rf, "rank_by": "last", "promotion": "synchronous",
                        "rung_levels": list(_levels), "stratify": _stratify, "budget": _budget, "tie_metrics": _ties}
for _x in (0.0, 1.0):  # the same rungs, asynchronous
    ARMS["MO-ASHA r4,12 rf2 last" + (" ex1" if _x else "") + " keep-front pause"] = {
        "grace_period": 4, "reduction_factor": 2, "rank_by": "last", "extrapolate": _x, "keep_front": True,
        "promotion": "pause", "rung_levels": [4, 12]}


def sweep_settings(args, seed: int, scheduler: dict | None) -> dict:
    sets = {"sweep.seed": seed, "sweep.sampler": "random", "sweep.num_trials": args.trials,
            "sweep.max_concurrent": 2, "unlearn.steps": args.steps, "eval.every": args.every,
            "eval.max_questions": args.questions, "train.checkpoint_every": args.every}
    if args.space:
        sets["sweep.search_space"] = str(Path(args.space).resolve())
    if scheduler:
        sets["sweep.scheduler"] = json.dumps({"name": "mo_asha", **scheduler})
    return sets


def run_sweep(args, name: str, sets: dict, work: Path) -> Path:
    db = work / f"{name}.db"
    if db.exists() and (work / f"{name}.done").exists():
        return db
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "raysweep.cli", "launch", args.job, "--name", name,
           "--tracking-uri", f"sqlite:///{db}", "--storage", str(work / "runs")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    (work / f"{name}.done").write_text("")
    drop_checkpoints(db, work / "runs" / name)
    print(f"  {name}: done", flush=True)
    return db


def drop_checkpoints(db: Path, storage: Path) -> None:
    """The replay reads a recording's sqlite MLflow alone. Its checkpoints - Tune's storage and the
    runs' MLflow artifacts (``./mlruns`` of the working directory, MLflow's default beside a sqlite
    store) - take ~2 GB a 24-trial sweep and filled a 100 GB disk after ~40 recordings: they go."""
    import sqlite3

    shutil.rmtree(storage, ignore_errors=True)
    with sqlite3.connect(db) as conn:
        uris = [u for (u,) in conn.execute("SELECT artifact_uri FROM runs")]
    for uri in uris:
        path = Path(uri.removeprefix("file://"))
        if path.name == "artifacts" and path.is_absolute():  # <root>/<experiment>/<run id>/artifacts
            shutil.rmtree(path.parent, ignore_errors=True)


def trajectories(db: Path, sweep: str) -> tuple[list[list[tuple]], dict, list[float], list[dict], list[list[tuple]]]:
    """Every trial's evaluations in trial order: [(step, values, feasible)], the objectives, the
    job's reference point, each trial's drawn configuration and its ``TIE_METRICS`` at each of
    those evaluations (NaN where not recorded); read from MLflow alone."""
    from raysweep.reporting.constraint import recorded_feasible
    from raysweep.sweep import tracking

    c = tracking.client(f"sqlite:///{db}")
    parent = tracking.find_parent(c, sweep, f"sqlite:///{db}")
    objectives = tracking.parent_objectives(parent)
    ref = json.loads(parent.data.tags["raysweep.reference_point"])
    constrained = tracking.parent_constrained(parent)
    out, ties = [], []
    # the order the searcher started them (a trial id is a hash: its order is no order)
    runs = sorted(tracking.child_runs(c, parent), key=lambda r: r.info.start_time)
    ids = [r.info.run_id for r in runs]  # every metric in bulk, as resume reads them (tracking.metric_points)
    read = {k: tracking.metric_histories(c, ids, f"eval/{k}") for k in [*objectives, "feasible", *TIE_METRICS]}
    for run_id in ids:
        hist = [read[k][run_id] for k in objectives]
        feasible = read["feasible"][run_id]
        steps = sorted(set.intersection(*(set(h) for h in hist)))
        out.append([(s, tuple(h[s] for h in hist), recorded_feasible(feasible.get(s), constrained)) for s in steps])
        ties.append([tuple(read[k][run_id].get(s, float("nan")) for k in TIE_METRICS) for s in steps])
    return out, objectives, [ref[k] for k in objectives], [tracking.trial_config(r) for r in runs], ties


def pooled(recordings: list[tuple]) -> tuple:
    """One sweep of every trial of ``recordings`` (each as ``trajectories`` returns it), those of the
    first first: with the random sampler each trial's configuration is a draw of its own, so K
    recorded sweeps of n trials on one job and space are one sweep of K * n trials, started in this
    order (``--pool``). Their objectives and reference point must agree."""
    first = recordings[0]
    for other in recordings[1:]:
        if list(other[1].items()) != list(first[1].items()) or list(other[2]) != list(first[2]):
            raise SystemExit(f"--pool: recordings with other objectives or reference points cannot be one sweep "
                             f"({first[1]} at {first[2]} vs {other[1]} at {other[2]})")
    return ([t for r in recordings for t in r[0]], first[1], first[2], [c for r in recordings for c in r[3]],
            [t for r in recordings for t in r[4]])


def replay(trials: list[list[tuple]], objectives: dict, ref: list[float], arm: dict | None,
           max_steps: int, workers: int = 2, seconds: list[list[float]] | None = None,
           configs: list[dict] | None = None, trained: dict | None = None, ties: list[list[tuple]] | None = None
           ) -> tuple[list[int], list[float], int, float]:
    """The sweep under ``arm``: (cumulative steps, hypervolume) after each evaluation, total steps,
    final hypervolume. With ``promotion: pause`` or ``synchronous`` a trial below the cut waits on
    its checkpoint; a free worker resumes the paused trial the rungs promote (``next_promotion``)
    before starting a new one, and continues its recorded trajectory: resuming from a checkpoint is
    bit-identical to not stopping on CPU (``tests/distributed/test_inline.py``,
    ``tests/models/test_lora.py``). Trials start in their order in ``trials`` (the searcher's);
    ``seconds[t][i]``: how long trial t takes to reach its evaluation i from the one before
    (default: the steps between them), which sets the order trials reach their rungs in;
    ``configs[t]``: trial t's drawn configuration, where the arm stratifies (as Tune's
    ``trial.config``); ``trained``, if given, receives each trial's last step trained; ``ties[t][i]``:
    trial t's ``TIE_METRICS`` at its evaluation i, for an arm with ``tie_metrics``."""
    from raysweep.sweep.pareto import hypervolume
    from raysweep.sweep.schedulers.mo_asha import CONTINUE, PAUSE, MOASHARungs

    arm = dict(arm or {})
    if arm.get("promotion") == "synchronous":
        arm.setdefault("num_trials", sum(1 for t in trials if t))
    rungs = MOASHARungs(dict(objectives), max_steps=max_steps, **arm) if arm else None
    tie_at = [list(TIE_METRICS).index(m) for m in arm.get("tie_metrics") or {}]
    dirs = list(objectives.values())
    events: list = []  # (time, tie, trial, index of the evaluation)
    queue = iter(range(len(trials)))
    resume_at: dict = {}  # paused trial -> index of its next evaluation
    seq = 0

    def run(trial: int, i: int, now: float):
        nonlocal seq
        took = seconds[trial][i] if seconds else trials[trial][i][0] - (trials[trial][i - 1][0] if i else 0)
        heapq.heappush(events, (now + took, seq, trial, i))
        seq += 1

    def next_job(now: float) -> bool:
        promoted = rungs.next_promotion() if rungs is not None else None
        if promoted is not None:
            rungs.resume(promoted)
            run(int(promoted), resume_at.pop(int(promoted)), now)
            return True
        for t in queue:
            if trials[t]:
                if rungs is not None:
                    rungs.add(str(t))  # the searcher's order (Tune's on_trial_add)
                run(t, 0, now)
                return True
        return False

    idle = sum(not next_job(0.0) for _ in range(workers))
    spent, pts, xs, ys = 0, [], [], []
    while events:
        now, _, trial, i = heapq.heappop(events)
        step, values, feasible = trials[trial][i]
        spent += step - (trials[trial][i - 1][0] if i else 0)
        if trained is not None:
            trained[trial] = step
        if feasible:
            pts.append(values)
        xs.append(spent)
        ys.append(hypervolume(np.array(pts), dirs, ref) if pts else 0.0)
        group = configs[trial].get(arm["stratify"]) if configs and arm.get("stratify") else None
        tie = [ties[trial][i][k] for k in tie_at] if ties and tie_at else ()
        decision = (rungs.on_result(str(trial), step, values, feasible, group=group, tie=tie) if rungs is not None
                    else CONTINUE)
        more = i + 1 < len(trials[trial])
        if decision == PAUSE and more:
            resume_at[trial] = i + 1
        elif rungs is not None and not more:
            rungs.ended(str(trial))
        if decision == CONTINUE and more:
            run(trial, i + 1, now)
        else:
            idle += not next_job(now)
        while idle and next_job(now):  # a report may have made a paused trial promotable
            idle -= 1
        if not events and rungs is not None and rungs.paused and rungs.promotion == "synchronous":
            while idle and rungs.force_settle() and next_job(now):  # as the Tune scheduler does
                idle -= 1
    if rungs is not None:
        rungs.stop_paused()
    return xs, ys, spent, (ys[-1] if ys else 0.0)


def replay_arm(arm: str, recording: tuple, max_steps: int, trained: dict | None = None
               ) -> tuple[list[int], list[float], int, float]:
    """``replay`` of the arm named ``arm`` on a recording (``trajectories``, or ``pooled``): a
    fewer-trials baseline is FIFO on the first of its trials, in the searcher's order."""
    trials, objectives, ref, configs, ties = recording
    if ARMS[arm] == "fewer":
        return replay(trials[:round(len(trials) * FEWER[arm])], objectives, ref, None, max_steps, trained=trained)
    return replay(trials, objectives, ref, ARMS[arm], max_steps, configs=configs, trained=trained, ties=ties)


def lost_trials(trials: list[list[tuple]], objectives: dict, ref: list[float], trained: dict,
                least: float = 0.001) -> list[tuple[int, float]]:
    """The trials whose untrained points (those after the arm stopped them) hold at least ``least``
    of FIFO's final hypervolume on their own: [(trial, share)], largest first."""
    from raysweep.sweep.pareto import hypervolume

    dirs = list(objectives.values())
    points = [(t, s, v) for t, traj in enumerate(trials) for s, v, ok in traj if ok]
    whole = hypervolume(np.array([v for _, _, v in points]), dirs, ref)
    out = []
    for t in range(len(trials)):
        kept = [v for u, s, v in points if u != t or s <= trained.get(t, 0)]
        share = (whole - (hypervolume(np.array(kept), dirs, ref) if kept else 0.0)) / whole
        if share >= least:
            out.append((t, share))
    return sorted(out, key=lambda x: -x[1])


def steps_to_reach(xs: list[int], ys: list[float], target: float) -> float:
    for x, y in zip(xs, ys):
        if y >= target - 1e-12:
            return x
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default=str(REPO / "jobs" / "quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--questions", type=int, default=40, help="eval.max_questions (each evaluation)")
    ap.add_argument("--space", help="another search space for the job (e.g. search_spaces/search_efficiency_wide.yaml)")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "raysweep" / "search_efficiency"),
                    help="where the recorded FIFO sweeps are kept (reused by a second call)")
    ap.add_argument("--validate", metavar="ARM", help="also run this arm for real on every seed given")
    ap.add_argument("--arms", nargs="+", metavar="ARM",
                    help="replay only these arms (and FIFO): names or patterns ('SHA r4,20 *'); default: every arm")
    ap.add_argument("--explain", metavar="ARM", help="per seed, the trials whose stopped points cost ARM the most "
                    "hypervolume: their configuration and trajectory")
    ap.add_argument("--pool", type=int, default=1, metavar="K",
                    help="replay sweeps of K times --trials trials, each pooling K recorded sweeps (the seeds given, "
                         "K at a time, in order): what a bigger sweep would have trained, from recordings")
    ap.add_argument("--plot", default=str(REPO / "benchmarks" / "search_efficiency.png"))
    args = ap.parse_args()
    if args.pool < 1 or len(args.seeds) % args.pool:
        ap.error(f"--pool: {args.pool} is not allowed (a whole number >= 1 that divides the {len(args.seeds)} "
                 "seeds given)")
    if args.pool > 1 and args.validate:
        ap.error("--validate: a pooled sweep was never run as one (--pool 1 only)")
    for flag, arm in (("--validate", args.validate), ("--explain", args.explain)):
        if arm and arm not in ARMS:
            raise SystemExit(f"{flag}: {arm!r} is not allowed ({', '.join(ARMS)})")
    for pattern in args.arms or []:
        if not fnmatch.filter(ARMS, pattern):
            raise SystemExit(f"--arms: {pattern!r} is not allowed (an arm's name or a pattern matching one: "
                             f"{', '.join(ARMS)})")
    if args.explain and ARMS[args.explain] in (None, "fewer"):
        raise SystemExit(f"--explain: {args.explain!r} stops no trial: nothing to explain")
    if ARMS.get(args.validate) == "fewer":
        raise SystemExit(f"--validate: {args.validate!r} is a FIFO sweep of fewer trials: nothing to validate")
    arms = {a: ARMS[a] for a in ARMS if not args.arms or a in ("FIFO", args.validate)
            or any(fnmatch.fnmatchcase(a, p) for p in args.arms)}

    work = Path(args.work) / (f"t{args.trials}-s{args.steps}-e{args.every}-q{args.questions}"
                              + (f"-{Path(args.space).stem}" if args.space else ""))
    work.mkdir(parents=True, exist_ok=True)
    recorded = {}
    for seed in args.seeds:
        name = f"fifo-{seed}"
        run_sweep(args, name, sweep_settings(args, seed, None), work)
        recorded[seed] = trajectories(work / f"{name}.db", name)
    if args.pool > 1:  # each pooled sweep goes by its seeds joined, "0+1+2"
        groups = [args.seeds[i:i + args.pool] for i in range(0, len(args.seeds), args.pool)]
        recorded = {"+".join(map(str, g)): pooled([recorded[s] for s in g]) for g in groups}
        args.seeds = list(recorded)

    results = {(arm, seed): replay_arm(arm, recording, args.steps)  # (arm, seed) -> (xs, ys, spent, hv)
               for arm in arms for seed, recording in recorded.items()}

    on = f" on {args.space}" if args.space else ""
    pool = f" (pooled from {args.pool} recorded sweeps of {args.trials})" if args.pool > 1 else ""
    print(f"\nquickstart job{on}, {args.trials * args.pool} trials{pool} x {args.steps} steps, 2 at a time, evaluated every {args.every} "
          f"steps ({args.questions} questions), random sampler, seeds {args.seeds}; replayed from the recorded FIFO sweeps")
    print(f"{'arm':<44} " + "  ".join(f"{'seed ' + str(s) + ': steps  HV   to99%':>28}" for s in args.seeds)
          + f"  {'mean steps':>10} {'mean HV':>8} {'worst steps':>11} {'worst HV':>8} {'seeds met':>9}")
    summary, met_on = {}, {}
    for arm in arms:
        cells, steps_r, hv_r = [], [], []
        for s in args.seeds:
            xs, ys, spent, hv = results[(arm, s)]
            _, _, f_spent, f_hv = results[("FIFO", s)]
            reach = steps_to_reach(xs, ys, 0.99 * f_hv)
            steps_r.append(spent / f_spent)
            hv_r.append(hv / f_hv if f_hv else 0.0)
            cells.append(f"{spent:>5} ({steps_r[-1]:.2f}) {hv:.4f} ({hv_r[-1]:.3f}) {reach:>5}")
        summary[arm] = (float(np.mean(steps_r)), float(np.mean(hv_r)), max(steps_r), min(hv_r))
        seeds_met = met_on[arm] = sum(r <= 0.5 and h >= 0.99 for r, h in zip(steps_r, hv_r))
        print(f"{arm:<44} " + "  ".join(f"{c:>28}" for c in cells)
              + f"  {summary[arm][0]:>10.2f} {summary[arm][1]:>8.3f} {summary[arm][2]:>11.2f} {summary[arm][3]:>8.3f}"
              + f" {seeds_met:>4} of {len(args.seeds)}")
    met = [a for a, (_, _, worst_steps, worst_hv) in summary.items() if a != "FIFO" and worst_steps <= 0.5
           and worst_hv >= 0.99]
    print("cells: steps (ratio to FIFO) HV (ratio to FIFO) steps-to-99%-of-FIFO's-HV; seeds met: those where the arm "
          "spends <= 0.5 of FIFO's steps and keeps >= 0.99 of its HV")
    print(f"target (every seed: steps <= 0.5 of FIFO's and HV >= 0.99 of FIFO's) met by: {', '.join(met) or 'none'}")
    half = "FIFO, first half of the trials"
    if half in summary:
        better = [a for a in summary if a != "FIFO" and a not in FEWER and summary[a][0] <= 0.5
                  and summary[a][1] > summary[half][1]]
        print(f"mean HV above {half!r} ({summary[half][1]:.3f} for {summary[half][0]:.2f} of the steps) "
              f"on <= 0.5 of FIFO's steps: {', '.join(better) or 'none'}")

    for what, suffix in (("stratified by method", " by-method"),
                         *((f"a budget of {b:g}", f" budget{b:g}") for b in BUDGETS),
                         ("ties ordered by the forget answer probability", " ties")):
        pairs = [(a, a[:-len(suffix)]) for a in summary if a.endswith(suffix) and a[:-len(suffix)] in summary]
        if not pairs:
            continue
        print(f"{what} vs the same arm without (mean steps, mean HV, worst HV, seeds met; seeds where its HV is "
              "higher):")
        for arm, plain in pairs:
            higher = sum(results[(arm, s)][3] > results[(plain, s)][3] + 1e-12 for s in args.seeds)
            lower = sum(results[(arm, s)][3] < results[(plain, s)][3] - 1e-12 for s in args.seeds)
            print(f"  {plain:<37} {summary[plain][0]:.2f} {summary[plain][1]:.3f} {summary[plain][3]:.3f} "
                  f"{met_on[plain]:>2}  ->  {suffix.strip()} {summary[arm][0]:.2f} {summary[arm][1]:.3f} "
                  f"{summary[arm][3]:.3f} {met_on[arm]:>2}  (higher on {higher}, lower on {lower} of "
                  f"{len(args.seeds)} seeds)")

    if args.explain:
        print(f"what {args.explain!r} lost: trials whose points after it stopped them hold >= 0.1% of FIFO's HV")
        for seed, recording in recorded.items():
            trials, objectives, ref, configs, _ = recording
            trained: dict = {}
            replay_arm(args.explain, recording, args.steps, trained=trained)
            for t, share in lost_trials(trials, objectives, ref, trained):
                path = " ".join(f"{s}:" + ",".join(f"{x:.3f}" for x in v) for s, v, _ in trials[t])
                print(f"  seed {seed} trial {t} ({json.dumps(configs[t], sort_keys=True)}): stopped at step "
                      f"{trained.get(t)}, loses {share:.3f} of the HV; {', '.join(objectives)} by step: {path}")

    if args.validate:
        for seed in args.seeds:
            name = f"{args.validate.replace(' ', '-')}-{seed}"
            db = run_sweep(args, name, sweep_settings(args, seed, ARMS[args.validate]), work)
            trials, objectives, ref, _, _ = trajectories(db, name)
            real_steps = sum(t[-1][0] for t in trials if t)
            real_hv = replay(trials, objectives, ref, None, args.steps)[3]  # every point it evaluated
            _, _, sim_steps, sim_hv = results[(args.validate, seed)]
            _, _, f_spent, f_hv = results[("FIFO", seed)]
            print(f"validation, {args.validate}, seed {seed}: replay {sim_steps} steps HV {sim_hv:.4f}; "
                  f"real sweep {real_steps} steps ({real_steps / f_spent:.2f} of FIFO's) HV {real_hv:.4f} "
                  f"({real_hv / f_hv:.3f} of FIFO's)", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    colours = plt.get_cmap("tab10")
    # in colour: FIFO, the fewer-trials baselines and the arms that meet the target, or (none does)
    # the 3 best by mean hypervolume among those spending <= 0.5 of FIFO's steps on average; every
    # other arm in grey, one legend entry
    thrifty = sorted((a for a in summary if a != "FIFO" and a not in FEWER and summary[a][0] <= 0.5),
                     key=lambda a: -summary[a][1])
    shown = list(dict.fromkeys(["FIFO", *(a for a in FEWER if a in arms), *(met or thrifty[:3])]))
    for arm in arms:  # each seed against its own FIFO sweep, so the seeds share one frame
        for s in args.seeds:
            xs, ys, _, _ = results[(arm, s)]
            _, _, f_spent, f_hv = results[("FIFO", s)]
            xs, ys = np.array(xs) / f_spent, np.array(ys) / f_hv
            if arm in FEWER:  # FIFO's own curve up to that many of its trials: its end point, per seed
                ax.plot(xs[-1:], ys[-1:], "o", color=colours(shown.index(arm) % 10), ms=6, zorder=5,
                        label=f"{arm} (end)" if s == args.seeds[0] else None)
            elif arm in shown:
                ax.step(xs, ys, where="post", color=colours(shown.index(arm) % 10), alpha=0.8, lw=1.3,
                        zorder=4 if arm == "FIFO" else 3, label=arm if s == args.seeds[0] else None)
            else:
                first = arm == next(a for a in arms if a not in shown) and s == args.seeds[0]
                ax.step(xs, ys, where="post", color="0.6", alpha=0.2, lw=0.7,
                        label=f"the {len(arms) - len(shown)} other arms" if first else None)
    ax.axhline(0.99, color="k", lw=0.8, ls="--")
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.text(0.51, 0.9915, "target: above 0.99 by 0.5", fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0.95, 1.005)  # where the arms differ, not the first steps
    ax.set_xlabel("unlearning steps spent, as a fraction of FIFO's (all trials)")
    ax.set_ylabel("hypervolume of evaluated points / FIFO's final")
    seeds = (f"{args.seeds[0]}-{args.seeds[-1]}" if args.pool == 1 and len(args.seeds) > 2
             and args.seeds == list(range(args.seeds[0], args.seeds[-1] + 1)) else ", ".join(map(str, args.seeds)))
    ax.set_title(f"quickstart{' (' + Path(args.space).stem + ')' if args.space else ''}, {args.trials * args.pool} trials x "
                 f"{args.steps} steps, seeds {seeds}, one line per seed", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
